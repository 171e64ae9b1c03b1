package harness

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestServerMatrixErrors(t *testing.T) {
	bin := t.TempDir() + "/nats-server"
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	all := "2.9.10=" + bin + ",2.10.29=" + bin + ",2.11.12=" + bin + ",2.12.15=" + bin
	for _, tc := range []struct{ env, want string }{
		{"", "make deps"},
		{"2.9.10", "not <version>=<path>"},
		{"2.9=" + bin, "major.minor.patch"},
		{"2.9.10=/nonexistent/nats-server,2.10.29=" + bin, "make deps"},
		{"2.10.29=" + bin + ",2.11.12=" + bin + ",2.12.15=" + bin, "no nats-server 2.9.x"},
	} {
		t.Setenv(EnvServers, tc.env)
		if _, err := ServerMatrix(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s=%q: %v, want an error with %q", EnvServers, tc.env, err, tc.want)
		}
	}
	t.Setenv(EnvServers, "2.15.3="+bin+","+all)
	m, err := ServerMatrix()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range m {
		got = append(got, b.Version)
	}
	if strings.Join(got, " ") != "2.9.10 2.10.29 2.11.12 2.12.15 2.15.3" {
		t.Errorf("versions %v, want them sorted oldest first", got)
	}
}

// TestNATSProc: a real server keeps its port and JetStream store across Shutdown/Start
// and Kill/Start; without JetStream nothing answers $JS.API.INFO.
func TestNATSProc(t *testing.T) {
	t.Parallel()
	for _, bin := range Servers(t) {
		t.Run(bin.Name(), func(t *testing.T) {
			t.Parallel()
			n := NewNATSProc(t, bin, NATSProcOptions{MaxPayload: 128 * 1024})
			nc := n.Connect(t)
			if got := nc.ConnectedServerVersion(); got != bin.Version {
				t.Fatalf("server version %q, want %s", got, bin.Version)
			}
			if got := nc.MaxPayload(); got != 128*1024 {
				t.Errorf("max_payload %d, want %d", got, 128*1024)
			}
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "H", Subjects: []string{"h.>"}, Storage: jetstream.FileStorage}); err != nil {
				t.Fatal(err)
			}
			port := n.Port
			for i, stop := range []func(){n.Shutdown, n.Kill} {
				if _, err := js.Publish(ctx, "h.x", []byte{byte(i)}); err != nil {
					t.Fatal(err)
				}
				stop()
				if n.Running() {
					t.Fatal("running after stop")
				}
				if c, err := nats.Connect(n.URL(), nats.Timeout(200*time.Millisecond), nats.NoReconnect()); err == nil {
					c.Close()
					t.Fatal("a stopped server accepts clients")
				}
				if err := n.Start(); err != nil {
					t.Fatal(err)
				}
				if n.Port != port {
					t.Fatalf("restarted on port %d, was %d", n.Port, port)
				}
				var s jetstream.Stream
				eventually(t, 10*time.Second, func() error {
					s, err = js.Stream(ctx, "H")
					return err
				})
				info, err := s.Info(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if info.State.Msgs != uint64(i+1) {
					t.Fatalf("after restart %d: %d messages, want %d", i+1, info.State.Msgs, i+1)
				}
			}
			if !strings.Contains(n.LogTail(100), "Server is ready") {
				t.Errorf("log lacks \"Server is ready\": %s", n.LogTail(5))
			}

			noJS := NewNATSProc(t, bin, NATSProcOptions{NoJetStream: true}).Connect(t)
			if _, err := noJS.Request("$JS.API.INFO", nil, 2*time.Second); !errors.Is(err, nats.ErrNoResponders) {
				t.Fatalf("$JS.API.INFO without JetStream: %v, want no responders", err)
			}
		})
	}
}

// TestNATSCluster: three nodes of the newest binary hold an R3 stream; with one node
// killed the other two keep accepting writes, and the node rejoins when started again.
func TestNATSCluster(t *testing.T) {
	t.Parallel()
	c := NewNATSCluster(t, NewestServer(t), 3, NATSProcOptions{})
	nc := c.Connect(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "R3", Subjects: []string{"r3.>"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, "r3.a", nil); err != nil {
		t.Fatal(err)
	}
	c.Nodes[1].Kill()
	eventually(t, 60*time.Second, func() error {
		_, err := js.Publish(ctx, "r3.b", nil, jetstream.WithMsgID("b"))
		return err
	})
	if err := c.Nodes[1].Start(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() error {
		s, err := js.Stream(ctx, "R3")
		if err != nil {
			return err
		}
		info, err := s.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.Msgs != 2 {
			return errors.New("messages lost")
		}
		for _, p := range info.Cluster.Replicas {
			if p.Name == c.Nodes[1].Name() && p.Current {
				return nil
			}
		}
		if info.Cluster.Leader == c.Nodes[1].Name() {
			return nil
		}
		return errors.New("node 2 not current yet")
	})
}

func eventually(t *testing.T, within time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %v", within, err)
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
}
