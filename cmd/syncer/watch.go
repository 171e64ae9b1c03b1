package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/beamline/registry-syncer/cache"
	"github.com/beamline/registry-syncer/client"
)

// watchLine is what `syncer watch --json` prints per applied revision.
type watchLine struct {
	// Bootstrap is true on the first line: the snapshot the watcher started from (its
	// changed lists every extension), not a revision applied on top of one.
	Bootstrap bool      `json:"bootstrap"`
	Revision  int64     `json:"revision"`
	Checksum  string    `json:"checksum"`
	Count     int       `json:"count"`
	Source    string    `json:"source"`
	Changed   []string  `json:"changed"`
	Applied   time.Time `json:"applied_at"`
}

// cmdWatch subscribes exactly like a router (through the client package) and prints
// every applied revision.
func cmdWatch(ctx context.Context, e *env, args []string) error {
	fs := newFlags("watch")
	asJSON := fs.Bool("json", false, "one JSON object per applied revision")
	dump := fs.Bool("dump", false, "print the current snapshot as JSON")
	once := fs.Bool("once", false, "exit after the first snapshot (with --dump) or revision")
	wait := fs.Duration("timeout", 10*time.Second, "how long to wait for a snapshot before failing")
	if _, err := parseInto(fs, args, 0, 0); err != nil {
		return err
	}
	if *wait <= 0 {
		return usagef("-timeout must be positive")
	}
	cfg, err := e.config()
	if err != nil {
		return err
	}
	log := newLogger(e.stderr, cfg)
	nc, closed, err := connectNATS(ctx, cfg, log, false)
	if err != nil {
		return err
	}
	defer func() {
		nc.Close()
		<-closed
	}()

	var (
		mu    sync.Mutex
		first = make(chan struct{})
		seen  bool
	)
	print := func(old, snap *cache.Snapshot, changed []string) {
		mu.Lock()
		defer mu.Unlock()
		if *dump {
			if !seen {
				seen = true
				close(first)
			}
			return
		}
		if *asJSON {
			line := watchLine{Bootstrap: old == nil, Revision: snap.Revision(), Checksum: snap.Checksum(), Count: snap.Len(),
				Source: snap.Source(), Changed: changed, Applied: time.Now().UTC()}
			if line.Changed == nil {
				line.Changed = []string{}
			}
			data, _ := json.Marshal(line)
			fmt.Fprintln(e.stdout, string(data))
		} else {
			what := "bootstrap"
			if old != nil {
				what = "applied"
			}
			fmt.Fprintf(e.stdout, "revision %d %s: %d extensions, checksum %.12s, source %s, changed: %s\n",
				snap.Revision(), what, snap.Len(), snap.Checksum(), snap.Source(), changedList(changed))
		}
		if !seen {
			seen = true
			close(first)
		}
	}
	// --dump waits for the snapshot and the deltas stored after it (WaitBootstrap), so
	// that what it prints is the current state, not the possibly older stored snapshot.
	cl, err := client.New(nc, client.Config{Prefix: cfg.Publisher.Prefix, Logger: log, OnChange: print, WaitBootstrap: *dump,
		TrustedKeys: cfg.TrustedKeys,
		OnError:     func(err error) { log.WarnContext(ctx, "watch: rejected a payload", "error", err) }})
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	timedOut := fmt.Errorf("watch: no registry snapshot on %s.* within %s (is a syncer running, and does EXTENSION_REGISTRY_SUBJECT_PREFIX match?)",
		cfg.Publisher.Prefix, *wait)
	timer := time.AfterFunc(*wait, func() {
		mu.Lock()
		defer mu.Unlock()
		if !seen {
			cancel()
		}
	})
	defer timer.Stop()
	if err := cl.Start(runCtx); err != nil {
		if ctx.Err() == nil && runCtx.Err() != nil {
			return timedOut
		}
		return fmt.Errorf("watch: %w", err)
	}
	defer cl.Stop()
	select {
	case <-ctx.Done():
		return nil
	case <-first:
	case <-runCtx.Done():
		if ctx.Err() != nil {
			return nil
		}
		return timedOut
	}
	timer.Stop()
	if *dump {
		snap := cl.Snapshot()
		doc, err := snap.Encode()
		if err != nil {
			return err
		}
		var pretty any
		if err := json.Unmarshal(doc, &pretty); err != nil {
			return err
		}
		out, err := json.MarshalIndent(pretty, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintln(e.stdout, string(out))
		if *once {
			return nil
		}
	} else if *once {
		return nil
	}
	<-ctx.Done()
	return nil
}

func changedList(ids []string) string {
	switch {
	case len(ids) == 0:
		return "-"
	case len(ids) > 10:
		return strings.Join(ids[:10], ", ") + fmt.Sprintf(" (+%d)", len(ids)-10)
	}
	return strings.Join(ids, ", ")
}
