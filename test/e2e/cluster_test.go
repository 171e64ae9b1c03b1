package e2e

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/beamline/registry-syncer/test/harness"
)

// TestCluster runs fault tests against a 3-node cluster of the newest nats-server, with
// both streams replicated on every node (EXTENSION_REGISTRY_STREAM_REPLICAS=3).
func TestCluster(t *testing.T) {
	t.Parallel()
	bin := harness.NewestServer(t)
	t.Run("NodeKilledMidBurst", func(t *testing.T) {
		t.Parallel()
		testNodeKilledMidBurst(t, bin)
	})
	t.Run("SyncerFailover", func(t *testing.T) {
		t.Parallel()
		cl := harness.NewNATSCluster(t, bin, 3, harness.NATSProcOptions{})
		testFailover(t, setupOn(t, "e2e.cluster.failover", cl.URL()), "STREAM_REPLICAS", "3")
	})
}

// testNodeKilledMidBurst SIGKILLs the node leading the delta stream while a writer
// commits 300 transactions, and starts it again while the burst goes on: every revision
// is stored exactly once, in order, the routers (spread over the nodes) converge, and the
// stored snapshot equals the database.
func testNodeKilledMidBurst(t *testing.T, bin harness.ServerBinary) {
	cl := harness.NewNATSCluster(t, bin, 3, harness.NATSProcOptions{})
	b := setupOn(t, "e2e.cluster.burst", cl.URL())
	b.seedDefaults(t)
	s := b.startSyncer(t, "STREAM_REPLICAS", "3")
	s.waitReady(t, 30*time.Second)
	base := b.storedSnapshot(t)
	ctx := context.Background()
	for _, name := range []string{b.names.DeltaStream, b.names.SnapshotStream} {
		st, err := b.js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if r := st.CachedInfo().Config.Replicas; r != 3 {
			t.Fatalf("stream %s has %d replicas, want 3", name, r)
		}
	}
	f := b.startFleet(t, 5, true)
	f.converge(t, b.db(t), time.Now(), 30*time.Second)

	const commits = 300
	bctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg       sync.WaitGroup
		burstErr atomic.Pointer[error]
		done     atomic.Int64
	)
	wg.Go(func() {
		for i := range commits {
			stmts := []string{fmt.Sprintf(`INSERT INTO extensions (id, type, subject, timeout_ms) VALUES ('burst_%03d', 'post', 'beamline.ext.post.burst_%03d.v1', %d)`, i, i, 10+i)}
			if i%3 == 2 { // a multi-table transaction
				stmts = append(stmts,
					fmt.Sprintf(`INSERT INTO extension_instances (extension_id, instance_id, subject, weight) VALUES ('burst_%03d', 'i', 'beamline.ext.post.burst_%03d.v1.i', %d)`, i-1, i-1, i%100),
					fmt.Sprintf(`UPDATE extensions SET retry = %d WHERE id = 'burst_%03d'`, i%4, i-2))
			}
			if _, _, err := commitOn(bctx, b.schema.Pool, stmts...); err != nil {
				err = fmt.Errorf("commit %d of the burst: %w", i, err)
				burstErr.Store(&err)
				return
			}
			done.Add(1)
		}
	})
	checkBurst := func() {
		if err := burstErr.Load(); err != nil {
			t.Fatal(*err)
		}
	}

	r0 := f.routers[0]
	eventually(t, 30*time.Second, "50 revisions of the burst applied", func() error {
		checkBurst()
		if rev := r0.c.Revision(); rev < base.Revision()+50 {
			return fmt.Errorf("%s at revision %d", r0.name, rev)
		}
		return nil
	})
	leader := streamLeader(t, b, cl)
	killedAt := time.Now()
	leader.Kill()
	atKill := r0.c.Revision()
	t.Logf("SIGKILL of %s (leader of %s) with the routers at revision %d", leader.Name(), b.names.DeltaStream, atKill)
	eventually(t, 30*time.Second, "revisions applied again after the kill", func() error {
		checkBurst()
		if rev := r0.c.Revision(); rev < atKill+20 {
			return fmt.Errorf("%s at revision %d", r0.name, rev)
		}
		return nil
	})
	t.Logf("publishing resumed: 20 more revisions applied %s after the kill", time.Since(killedAt).Round(time.Millisecond))
	if err := leader.Start(); err != nil {
		t.Fatalf("restart %s: %v", leader.Name(), err)
	}
	wg.Wait()
	checkBurst()
	want := b.db(t)
	if want.Revision() != base.Revision()+commits {
		t.Fatalf("database at revision %d after %d commits from %d", want.Revision(), commits, base.Revision())
	}
	c := f.converge(t, want, killedAt, 60*time.Second)
	t.Logf("every router and the watcher at the burst's last revision %d %s after the kill", want.Revision(), c.max.Round(time.Millisecond))
	b.waitStoredSnapshot(t, want, 30*time.Second)
	b.checkHistory(t, base, want)
	// The restarted node catches up: its replica of the delta stream holds every revision.
	eventually(t, 30*time.Second, leader.Name()+" current again", func() error {
		st, err := b.js.Stream(ctx, b.names.DeltaStream)
		if err != nil {
			return err
		}
		info, err := st.Info(ctx)
		if err != nil {
			return err
		}
		if info.Cluster == nil {
			return errors.New("no cluster info")
		}
		for _, p := range info.Cluster.Replicas {
			if p.Name == leader.Name() && p.Current && !p.Offline {
				return nil
			}
		}
		if info.Cluster.Leader == leader.Name() {
			return nil
		}
		return fmt.Errorf("replicas %+v", info.Cluster.Replicas)
	})
	for _, r := range f.routers {
		if n := r.rejected.Load(); n != 0 {
			t.Errorf("%s rejected %d payloads: %v", r.name, n, r.errors())
		}
	}
	if n := f.watch.rejections(); n != 0 {
		t.Errorf("the watcher rejected %d payloads", n)
	}
}

// streamLeader is the cluster node leading the delta stream.
func streamLeader(t *testing.T, b *testBundle, cl *harness.NATSCluster) *harness.NATSProc {
	t.Helper()
	var node *harness.NATSProc
	eventually(t, 10*time.Second, "the delta stream's leader", func() error {
		st, err := b.js.Stream(context.Background(), b.names.DeltaStream)
		if err != nil {
			return err
		}
		info, err := st.Info(context.Background())
		if err != nil {
			return err
		}
		if info.Cluster == nil || info.Cluster.Leader == "" {
			return errors.New("no leader")
		}
		if node = cl.Node(info.Cluster.Leader); node == nil {
			return fmt.Errorf("leader %q is not a node of the cluster", info.Cluster.Leader)
		}
		return nil
	})
	return node
}
