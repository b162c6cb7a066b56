package eval

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// pingRow is one line of a per-source ping file: the destination's site
// index and its RTT summary.
type pingRow struct {
	j  int
	st Stat
}

// LoadPingDir reads a directory of per-source ping summaries: one file
// per source site, named after it with the extension .dat, each line
// "min/avg/max/mdev:destination" in ms (ping's own summary line, as in
// vitorenesduarte/fantoch's latency_gcp and latency_aws sets). Other
// files are ignored; a malformed line is an error naming file and line.
func LoadPingDir(dir string) (*Matrix, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read latency directory: %w", err)
	}
	var files []string
	for _, e := range ents {
		if !e.IsDir() && strings.EqualFold(filepath.Ext(e.Name()), ".dat") {
			files = append(files, e.Name())
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("%w: %s: no .dat files (one per source site, lines min/avg/max/mdev:destination)", ErrFormat, dir)
	}
	slices.Sort(files) // site order must not depend on the directory's
	var sites siteIndex
	type srcRows struct {
		i    int
		rows []pingRow
	}
	var all []srcRows
	for _, fn := range files {
		src := strings.TrimSuffix(fn, filepath.Ext(fn))
		i := sites.get(src)
		f, err := os.Open(filepath.Join(dir, fn))
		if err != nil {
			return nil, fmt.Errorf("open ping file: %w", err)
		}
		rows, err := readPingDat(f, fn, &sites)
		f.Close()
		if err != nil {
			return nil, err
		}
		all = append(all, srcRows{i, rows})
	}
	n := len(sites.names)
	if n*n > maxCells {
		return nil, fmt.Errorf("%w: %s: %d sites is too large", ErrFormat, dir, n)
	}
	m := &Matrix{Name: filepath.Base(filepath.Clean(dir)), Snaps: []Snapshot{newSnap(n, 0, "")}}
	for _, s := range sites.names {
		m.Sites = append(m.Sites, Site{Name: s})
	}
	for _, sr := range all {
		for _, r := range sr.rows {
			m.Snaps[0].RTT[sr.i*n+r.j] = r.st
		}
	}
	return m, nil
}

// readPingDat reads one source's file (see LoadPingDir); destinations
// are added to sites.
func readPingDat(r io.Reader, name string, sites *siteIndex) ([]pingRow, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	errf := func(line int, format string, a ...any) error {
		return fmt.Errorf("%w: %s line %d: %s", ErrFormat, name, line, fmt.Sprintf(format, a...))
	}
	var rows []pingRow
	seen := map[int]bool{}
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(strings.TrimPrefix(sc.Text(), utf8BOM))
		if text == "" {
			continue
		}
		stats, dst, ok := strings.Cut(text, ":")
		dst = strings.TrimSpace(dst)
		if !ok || dst == "" {
			return nil, errf(line, "%q is not min/avg/max/mdev:destination", text)
		}
		f := strings.Split(stats, "/")
		if len(f) != 4 {
			return nil, errf(line, "%q: want four numbers min/avg/max/mdev", stats)
		}
		var v [4]float64
		for k := range f {
			x, err := strconv.ParseFloat(strings.TrimSpace(f[k]), 64)
			if err != nil || !(x >= 0 && x <= 1e6) { // NaN fails both
				return nil, errf(line, "%q is not a round-trip time in ms", f[k])
			}
			v[k] = x
		}
		// ping rounds to µs: a real inversion is corrupt data.
		const slack = 1e-6
		if v[0] > v[1]+slack || v[1] > v[2]+slack {
			return nil, errf(line, "min %.3f ≤ avg %.3f ≤ max %.3f does not hold", v[0], v[1], v[2])
		}
		j := sites.get(dst)
		if len(sites.names) > maxSites {
			return nil, errf(line, "more than %d sites", maxSites)
		}
		if seen[j] {
			return nil, errf(line, "destination %q repeated", dst)
		}
		seen[j] = true
		rows = append(rows, pingRow{j, Stat{Avg: v[1], Min: v[0], Max: v[2], Mdev: v[3]}})
	}
	if err := sc.Err(); err != nil {
		return nil, errf(line+1, "%v", err)
	}
	return rows, nil
}
