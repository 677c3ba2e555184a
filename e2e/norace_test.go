//go:build !race

package e2e

// raceEnabled reports whether the tests run with -race; the skiff binary under
// test is then built with -race too.
const raceEnabled = false
