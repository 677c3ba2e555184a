package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"github.com/skiffproxy/skiff/internal/runtimedir"
	"github.com/skiffproxy/skiff/internal/stats"
)

// statsFile is the stats region's name in the runtime directory.
const statsFile = "stats"

// statsCmd prints the counters and gauges of the skiff whose runtime directory
// is given, read straight from its stats file: no lock, no socket, no help from
// the process, so it works on a wedged skiff and on the file a stopped one left.
func statsCmd(args []string, stdout, stderr io.Writer) error {
	fset := flag.NewFlagSet("skiff stats", flag.ContinueOnError)
	fset.SetOutput(stderr)
	fset.Usage = func() {
		fmt.Fprint(stderr, `Usage: skiff stats [flags]

Prints a skiff's counters and gauges from <runtime-dir>/stats, as Envoy's /stats
does ("name: value" lines, sorted by name). It reads the file directly, so it
works when the skiff is wedged or no longer running.

Flags:
`)
		fset.PrintDefaults()
	}
	dir := fset.String("runtime-dir", runtimedir.Default(), "the runtime directory of the skiff to inspect")
	filter := fset.String("filter", "", "print only stats whose name matches this regular expression (RE2, unanchored, as Envoy's ?filter=)")
	usedOnly := fset.Bool("used-only", false, "print only stats whose value is not 0 (as Envoy's ?usedonly)")
	format := fset.String("o", "text", "output format: text or json")
	if err := fset.Parse(args); err != nil {
		return err
	}
	if fset.NArg() > 0 {
		return fmt.Errorf("stats: unexpected argument %q", fset.Arg(0))
	}
	if *format != "text" && *format != "json" {
		return fmt.Errorf("stats: -o %q: the formats are text and json", *format)
	}
	var re *regexp.Regexp
	if *filter != "" {
		var err error
		if re, err = regexp.Compile(*filter); err != nil {
			return fmt.Errorf("stats: --filter: %w", err)
		}
	}

	path := filepath.Join(*dir, statsFile)
	snap, err := stats.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("stats: no stats file at %s: no skiff has run with --runtime-dir %s", path, *dir)
	}
	if err != nil {
		return fmt.Errorf("stats: %w", err)
	}
	warnStale(stderr, path, snap)

	var out []stats.FileStat
	for _, st := range snap.Stats {
		if (*usedOnly && st.Value == 0) || (re != nil && !re.MatchString(st.Name)) {
			continue
		}
		out = append(out, st)
	}
	if *format == "json" {
		return writeStatsJSON(stdout, snap, out)
	}
	for _, st := range out {
		if _, err := fmt.Fprintf(stdout, "%s: %s\n", printableName(st.Name), formatValue(st)); err != nil {
			return err
		}
	}
	return nil
}

// warnStale tells, on stderr, when no running skiff holds the file or when it
// was read in the middle of an allocation.
func warnStale(w io.Writer, path string, snap *stats.FileSnapshot) {
	var newest *stats.GenerationInfo
	for i := range snap.Generations {
		g := &snap.Generations[i]
		if g.Live {
			newest = nil
			break
		}
		if newest == nil || g.Generation > newest.Generation {
			newest = g
		}
	}
	switch {
	case newest != nil && newest.Exited:
		fmt.Fprintf(w, "skiff stats: no running skiff uses %s; values as generation %d (pid %d) left them when it exited\n",
			path, newest.Generation, newest.PID)
	case newest != nil:
		fmt.Fprintf(w, "skiff stats: no running skiff uses %s; values as generation %d (pid %d) left them: it did not exit cleanly\n",
			path, newest.Generation, newest.PID)
	case len(snap.Generations) == 0:
		fmt.Fprintf(w, "skiff stats: no running skiff uses %s\n", path)
	}
	if !snap.Consistent {
		fmt.Fprintln(w, "skiff stats: the file was changing while read (a stat being created or removed may be missing)")
	}
}

// formatValue prints a counter as the unsigned number it is.
func formatValue(st stats.FileStat) string {
	if st.Kind == stats.KindCounter {
		return strconv.FormatUint(uint64(st.Value), 10)
	}
	return strconv.FormatInt(st.Value, 10)
}

// printableName quotes a name that would otherwise put control characters on
// the terminal (the file may hold anything).
func printableName(name string) string {
	for _, r := range name {
		if !strconv.IsPrint(r) || r == ' ' {
			return strconv.Quote(name)
		}
	}
	return name
}

type statsJSON struct {
	Stats       []statJSON       `json:"stats"`
	Generations []generationJSON `json:"generations"`
	Consistent  bool             `json:"consistent"`
}

type statJSON struct {
	Name  string          `json:"name"`
	Value json.RawMessage `json:"value"`
	Type  string          `json:"type"`
	Mode  string          `json:"import_mode,omitempty"`
}

type generationJSON struct {
	Generation uint64    `json:"generation"`
	PID        int       `json:"pid"`
	Start      time.Time `json:"start"`
	Live       bool      `json:"live"`
	Exited     bool      `json:"exited,omitempty"`
}

// writeStatsJSON writes Envoy's /stats?format=json shape ({"stats":[{"name",
// "value"}]}) with each stat's type and the region's generations added.
func writeStatsJSON(w io.Writer, snap *stats.FileSnapshot, sts []stats.FileStat) error {
	out := statsJSON{Stats: []statJSON{}, Generations: []generationJSON{}, Consistent: snap.Consistent}
	for _, st := range sts {
		j := statJSON{Name: st.Name, Value: json.RawMessage(formatValue(st)), Type: st.Kind.String()}
		if st.Kind == stats.KindGauge {
			j.Mode = st.Mode.String()
		}
		out.Stats = append(out.Stats, j)
	}
	for _, g := range snap.Generations {
		out.Generations = append(out.Generations, generationJSON{Generation: g.Generation, PID: g.PID, Start: g.Start, Live: g.Live, Exited: g.Exited})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
