// Command controller holds premirror's desired state, forecasts demand,
// places mirrors and computes route tables for the edge agents.
// Subcommands register themselves from their own files (see internal/cli).
package main

import (
	"os"

	"github.com/premirror/premirror/internal/cli"
)

var commands = &cli.Registry{Prog: "controller", Default: "run"}

func main() { os.Exit(commands.Main(os.Args[1:])) }
