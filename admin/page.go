package admin

import (
	"bytes"
	"context"
	"embed"
	"html/template"
	"log/slog"
	"net/http"
	"slices"
	"time"

	"github.com/beamline/registry-syncer/changelog"
	"github.com/beamline/registry-syncer/protocol"
	"github.com/beamline/registry-syncer/syncer"
)

// The status page at GET /: server-rendered HTML (html/template escapes every value), no
// script, no external asset; the Content-Security-Policy forbids loading anything.

//go:embed page.html
var pageFS embed.FS

var pageTemplate = template.Must(template.New("page.html").Funcs(template.FuncMap{
	"ago": func(now, t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return now.Sub(t).Round(100*time.Millisecond).String() + " ago"
	},
	"utc": func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05.000Z") },
	"seconds": func(s float64) string {
		return (time.Duration(s * float64(time.Second))).Round(100 * time.Millisecond).String()
	},
}).ParseFS(pageFS, "page.html"))

// pageRevisions is how many recent revisions the page lists, and pageEntries how many
// change-log rows it reads for them.
const (
	pageRevisions = 20
	pageEntries   = 500
)

// pageData is what the template renders.
type pageData struct {
	Now        time.Time
	Status     syncer.Status
	Fleet      *protocol.FleetStatus
	FleetError string
	Revisions  []pageRevision
	// HistoryError says why recent revisions are missing ("" when they are there or no
	// history is configured).
	HistoryError string
	HasHistory   bool
}

// pageRevision is one revision of the change log: when, by whom, what.
type pageRevision struct {
	Revision    int64
	CommittedAt time.Time
	Authors     []string
	Changes     []pageChange
}

type pageChange struct {
	ID, Entity, Key, Action string
	Fields                  []string
}

// groupRevisions folds change-log entries (oldest first) into revisions, newest first,
// at most n of them.
func groupRevisions(entries []changelog.Entry, n int) []pageRevision {
	var out []pageRevision
	for i := len(entries) - 1; i >= 0; i-- {
		e := entries[i]
		if len(out) == 0 || out[len(out)-1].Revision != e.Revision {
			if len(out) == n {
				break
			}
			out = append(out, pageRevision{Revision: e.Revision, CommittedAt: e.CommittedAt})
		}
		r := &out[len(out)-1]
		if !slices.Contains(r.Authors, e.ChangedBy) {
			r.Authors = append(r.Authors, e.ChangedBy)
		}
		// Entries of one revision arrive newest first: put them back in order.
		r.Changes = slices.Insert(r.Changes, 0, pageChange{ID: e.ExtensionID, Entity: e.Entity, Key: e.Key, Action: e.Action, Fields: e.Fields})
	}
	for i := range out {
		slices.Sort(out[i].Authors)
	}
	return out
}

func (s *Server) page(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	d := pageData{Now: time.Now().UTC(), Status: s.cfg.Status(), HasHistory: s.cfg.History != nil}
	if s.cfg.Routers != nil {
		if fs, err := s.cfg.Routers(); err != nil {
			d.FleetError = err.Error()
		} else {
			d.Fleet = fs
		}
	}
	if s.cfg.History != nil {
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		entries, err := s.cfg.History(hctx, pageEntries)
		cancel()
		if err != nil {
			s.log.WarnContext(ctx, "admin: status page: cannot read the change log", slog.Any("error", err))
			d.HistoryError = err.Error()
		}
		d.Revisions = groupRevisions(entries, pageRevisions)
	}
	var buf bytes.Buffer
	if err := pageTemplate.Execute(&buf, d); err != nil {
		s.log.ErrorContext(ctx, "admin: status page", slog.Any("error", err))
		http.Error(w, "status page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	_, _ = w.Write(buf.Bytes())
}
