package deploy

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestNoMergeConflictMarkers: no tracked file holds a line a merge tool left behind.
func TestNoMergeConflictMarkers(t *testing.T) {
	t.Parallel()
	dir := root(t)
	out, err := exec.Command("git", "-C", dir, "ls-files").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v (the test runs in a git checkout)", err)
	}
	for _, name := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f, err := os.Open(filepath.Join(dir, name))
		if err != nil {
			continue // deleted in the work tree
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<24)
		for n := 1; sc.Scan(); n++ {
			line := sc.Text()
			if strings.HasPrefix(line, "<<<<<<< ") || strings.HasPrefix(line, ">>>>>>> ") {
				t.Errorf("%s:%d: merge conflict marker %q", name, n, line)
			}
		}
		f.Close()
	}
}
