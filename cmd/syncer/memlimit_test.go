package main

import "testing"

// TestMemoryLimitFollowsTheLiveHeap: the configured limit holds while the live heap is
// under two thirds of it, and is 1.5 times the live heap above that, so a registry too
// large for the limit never leaves the collector without headroom.
func TestMemoryLimitFollowsTheLiveHeap(t *testing.T) {
	t.Parallel()
	const mib = 1 << 20
	for _, c := range []struct{ floor, live, want int64 }{
		{256 * mib, 0, 256 * mib},
		{256 * mib, 110 * mib, 256 * mib},
		{256 * mib, 170 * mib, 256 * mib},
		{256 * mib, 200 * mib, 300 * mib},
		{256 * mib, 1024 * mib, 1536 * mib},
	} {
		if got := memoryLimitFor(c.floor, c.live); got != c.want {
			t.Errorf("memoryLimitFor(%d MiB, live %d MiB) = %d MiB, want %d MiB", c.floor/mib, c.live/mib, got/mib, c.want/mib)
		}
	}
}
