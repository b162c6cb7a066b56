// Command edge-agent runs on every edge and mirror node: it loads and pins
// the XDP programs, programs their maps, probes mirrors, exports metrics and
// access counts, and runs the node's replicator. Subcommands register
// themselves from their own files (see internal/cli).
package main

import (
	"os"

	"github.com/premirror/premirror/internal/cli"
)

var commands = &cli.Registry{Prog: "edge-agent", Default: "run"}

func main() { os.Exit(commands.Main(os.Args[1:])) }
