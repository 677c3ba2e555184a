// Package e2e holds skiff's black-box tests: they build the real skiff binary,
// start it as a child process with a bootstrap generated on loopback, and check
// what a client and an upstream see through it.
//
// The package has no code of its own; everything is in its _test.go files. Run it
// with
//
//	go test -race ./e2e/
//
// The binary is built with -race when the tests are.
package e2e
