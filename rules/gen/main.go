// Command gen writes the files generated from package rules: the SQL migration and the
// JSON Schemas. Its argument is the repository root (go generate runs it from rules/ with "..").
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/beamline/registry-syncer/rules"
)

func main() {
	root := "."
	if len(os.Args) > 1 {
		root = os.Args[1]
	}
	for _, f := range rules.Generated() {
		if err := os.WriteFile(filepath.Join(root, f.Path), f.Content, 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "gen:", err)
			os.Exit(1)
		}
	}
}
