package client

import (
	"math"
	"math/bits"

	"github.com/beamline/registry-syncer/cache"
)

// Instance selection.
//
// An instance may receive traffic when it is enabled and its health_status is not
// "unhealthy" ("degraded" and "unknown" are usable, like "healthy"). Among the
// usable instances, traffic is shared by weight; an instance of weight 0 gets none
// unless every usable instance has weight 0, in which case they share it equally.
// With a sticky key (Request.StickyKey, or the attribute named by the extension's
// metadata.sticky_attr), the instance is chosen by weighted rendezvous hashing of
// the key and the instance ids: the same key lands on the same instance as long
// as the set of usable instances and their weights do not change, and a change
// moves only the keys of the instances concerned. The hash (FNV-1a 64 of
// key, 0x00, instance_id, finished with the splitmix64 mixer) does not depend on
// the process, so every router sends a key to the same instance.

// usableInstance reports whether an instance may receive traffic.
func usableInstance(in *cache.Instance) bool {
	return in.Enabled && in.HealthStatus != cache.HealthUnhealthy
}

// instanceWeights returns the total weight of the usable instances, how many
// are usable, and how many are enabled.
func instanceWeights(insts []cache.Instance) (total, usable, enabled int) {
	for i := range insts {
		in := &insts[i]
		if in.Enabled {
			enabled++
		}
		if usableInstance(in) {
			usable++
			total += in.Weight
		}
	}
	return total, usable, enabled
}

// effectiveWeight is an instance's share of traffic given the total of the
// usable weights (all-zero weights count as 1 each).
func effectiveWeight(in *cache.Instance, total int) int {
	if !usableInstance(in) {
		return 0
	}
	if total == 0 {
		return 1
	}
	return in.Weight
}

// pickWeighted returns the index of the usable instance that r (uniform over
// uint64) selects by weight, or -1 when none is usable.
func pickWeighted(insts []cache.Instance, r uint64) int {
	total, usable, _ := instanceWeights(insts)
	if usable == 0 {
		return -1
	}
	span := total
	if span == 0 {
		span = usable
	}
	// Multiply-shift maps r onto [0, span) without the bias of a modulo.
	hi, _ := bits.Mul64(r, uint64(span))
	x := int(hi)
	for i := range insts {
		w := effectiveWeight(&insts[i], total)
		if w == 0 {
			continue
		}
		if x < w {
			return i
		}
		x -= w
	}
	return -1 // unreachable: x < span
}

// pickSticky returns the index of the usable instance that key hashes to
// (weighted rendezvous hashing), or -1 when none is usable.
func pickSticky(insts []cache.Instance, key string) int {
	total, _, _ := instanceWeights(insts)
	best, bestScore := -1, 0.0
	for i := range insts {
		w := effectiveWeight(&insts[i], total)
		if w == 0 {
			continue
		}
		h := stickyHash(key, insts[i].InstanceID)
		u := (float64(h>>11) + 0.5) / (1 << 53) // in (0, 1)
		score := -float64(w) / math.Log(u)
		if best < 0 || score > bestScore {
			best, bestScore = i, score
		}
	}
	return best
}

func stickyHash(key, instance string) uint64 {
	const offset, prime = 14695981039346656037, 1099511628211
	h := uint64(offset)
	for i := 0; i < len(key); i++ {
		h = (h ^ uint64(key[i])) * prime
	}
	h = (h ^ 0) * prime
	for i := 0; i < len(instance); i++ {
		h = (h ^ uint64(instance[i])) * prime
	}
	// splitmix64 finalizer: FNV's low bits mix poorly.
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return h
}
