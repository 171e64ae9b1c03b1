package protocol

import (
	"crypto/sha256"
	"encoding/binary"
)

// verifiedSize is how many verified signatures a process remembers.
const verifiedSize = 4096

// verified remembers, process-wide, the last signatures that verified: the same message
// (key, signature, kind and payload, byte for byte) reaching several clients of one process
// — or one client twice, live and from the stream — costs one Ed25519 verification. Only
// successes are remembered, keyed by a SHA-256 over an unambiguous encoding of all four,
// so a hit is exactly an input that verified before; nothing else is trusted by it.
var verified = newRecent[struct{}](verifiedSize)

func verifyDigest(key string, sig []byte, kind string, payload []byte) [32]byte {
	h := sha256.New()
	var n [8]byte
	for _, part := range [][]byte{[]byte(key), sig, []byte(kind)} {
		binary.BigEndian.PutUint64(n[:], uint64(len(part)))
		h.Write(n[:])
		h.Write(part)
	}
	h.Write(payload)
	var d [32]byte
	h.Sum(d[:0])
	return d
}
