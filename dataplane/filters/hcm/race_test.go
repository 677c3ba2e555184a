//go:build race

package hcm_test

const raceEnabled = true
