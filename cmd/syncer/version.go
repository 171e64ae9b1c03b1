package main

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// buildInfo is what the binary knows about its build.
type buildInfo struct {
	Version   string `json:"version"`  // the module version, "(devel)" for a local build
	Revision  string `json:"revision"` // VCS commit, "unknown" outside a repository
	Time      string `json:"time,omitempty"`
	Modified  bool   `json:"modified"` // built from a work tree with uncommitted changes
	GoVersion string `json:"go_version"`
}

func readBuildInfo() buildInfo {
	bi := buildInfo{Version: "(devel)", Revision: "unknown"}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return bi
	}
	bi.GoVersion = info.GoVersion
	if v := info.Main.Version; v != "" {
		bi.Version = v
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			bi.Revision = s.Value
		case "vcs.time":
			bi.Time = s.Value
		case "vcs.modified":
			bi.Modified = s.Value == "true"
		}
	}
	return bi
}

// registerBuildInfo adds registry_syncer_build_info (always 1, the build in its labels).
func registerBuildInfo(reg prometheus.Registerer) {
	bi := readBuildInfo()
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "registry_syncer", Name: "build_info",
		Help: "The syncer's build: always 1, version, VCS revision and Go version in the labels."},
		[]string{"version", "revision", "goversion"})
	g.WithLabelValues(bi.Version, bi.Revision, bi.GoVersion).Set(1)
	reg.MustRegister(g)
}

func cmdVersion(_ context.Context, e *env, args []string) error {
	fs := newFlags("version")
	asJSON := fs.Bool("json", false, "print the build information as JSON")
	if _, err := parseInto(fs, args, 0, 0); err != nil {
		return err
	}
	bi := readBuildInfo()
	if *asJSON {
		data, err := json.Marshal(bi)
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, string(data))
		return nil
	}
	mod := ""
	if bi.Modified {
		mod = " (modified)"
	}
	fmt.Fprintf(e.stdout, "syncer %s, commit %s%s, built with %s\n", bi.Version, bi.Revision, mod, bi.GoVersion)
	return nil
}
