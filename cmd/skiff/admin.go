package main

import (
	"errors"
	"io"
)

// adminCmd is being written; see the issue that introduces 'skiff admin'.
func adminCmd(args []string, stdout, stderr io.Writer) error {
	return errors.New("skiff admin: not available in this build yet")
}
