package cache

import (
	"crypto/sha256"
	"strconv"
)

// Canonical returns the canonical encoding of the extension aggregate e, the
// bytes whose SHA-256 is the extension's hash in a snapshot checksum:
//
//   - the JSON object with all fields of Extension, including versions and
//     instances, except auto_disabled when it is false ([] when empty; versions sorted by version, instances by
//     instance_id, bytewise);
//   - object keys of every object, including inside config, metadata and
//     routing_rules, sorted bytewise (UTF-8); empty or null config, metadata
//     and routing_rules written as {};
//   - no insignificant whitespace;
//   - strings with '"', '\\', \b, \f, \n, \r, \t escaped as such, other code
//     points below U+0020 as \u00xx (lowercase hex) and everything else
//     literally in UTF-8;
//   - numbers as IEEE-754 doubles written as ECMAScript Number.prototype.toString
//     does; true, false and null literally.
//
// e is validated first (see Extension.Validate): an invalid extension,
// invalid UTF-8 or a duplicate object key is an error. e is not modified.
func Canonical(e *Extension) ([]byte, error) {
	c := cloneExtension(e)
	n := getNormalizer()
	defer putNormalizer(n)
	if err := n.normalize(&c, false); err != nil {
		return nil, err
	}
	return appendAggregate(nil, &c), nil
}

// CanonicalV2 returns the canonical encoding of protocol checksum v2: the
// RFC 8785 (JSON Canonicalization Scheme) serialization of the same JSON value
// Canonical encodes. It differs from Canonical only in the order of object
// keys inside config, metadata and routing_rules, which RFC 8785 sorts by
// UTF-16 code units: the two orders differ only for keys holding both a
// character in U+E000..U+FFFF and one above U+FFFF. e is validated first, as
// for Canonical.
func CanonicalV2(e *Extension) ([]byte, error) {
	c := cloneExtension(e)
	n := getNormalizer()
	defer putNormalizer(n)
	if err := n.normalize(&c, false); err != nil {
		return nil, err
	}
	n.jcs.utf16 = true
	return appendAggregateWith(nil, &c, &n.jcs), nil
}

// hashes returns the hashes of the normalized e: h, the SHA-256 of its v2
// (RFC 8785) encoding, and h1, the SHA-256 of its v1 encoding when that
// differs (nil when the two encodings are the same bytes, as they are for
// nearly every aggregate).
func (n *normalizer) hashes(e *Extension) (h [32]byte, h1 *[32]byte) {
	n.buf = appendAggregate(n.buf[:0], e)
	v1 := sha256.Sum256(n.buf)
	if !aggregateOrderDiffers(e) {
		return v1, nil
	}
	n.jcs.utf16 = true
	n.buf = appendAggregateWith(n.buf[:0], e, &n.jcs)
	if h = sha256.Sum256(n.buf); h == v1 {
		return h, nil
	}
	return h, &v1
}

// aggregateOrderDiffers reports whether a raw field of e may order its keys
// differently in the v1 and v2 encodings.
func aggregateOrderDiffers(e *Extension) bool {
	if jcsOrderDiffers(e.Config) || jcsOrderDiffers(e.Metadata) {
		return true
	}
	for i := range e.Versions {
		v := &e.Versions[i]
		if jcsOrderDiffers(v.Config) || jcsOrderDiffers(v.Metadata) || jcsOrderDiffers(v.RoutingRules) {
			return true
		}
	}
	return false
}

// appendRawWith appends a canonical raw field, re-sorted through p when p is
// not nil.
func appendRawWith(dst []byte, raw []byte, p *jsonParser) []byte {
	if len(raw) == 0 {
		return append(dst, '{', '}')
	}
	if p != nil {
		if out, err := p.canonicalJSON(dst, raw); err == nil {
			return out
		}
		// Unreachable: raw is canonical JSON already.
	}
	return append(dst, raw...)
}

func appendBool(dst []byte, b bool) []byte {
	if b {
		return append(dst, "true"...)
	}
	return append(dst, "false"...)
}

// appendAggregate appends the canonical encoding of a normalized extension
// (raw fields canonical, children sorted). Keys are written in bytewise order.
func appendAggregate(dst []byte, e *Extension) []byte { return appendAggregateWith(dst, e, nil) }

// appendAggregateWith is appendAggregate with the raw fields re-canonicalized
// through p when p is not nil (with p.utf16 set: the v2 encoding).
func appendAggregateWith(dst []byte, e *Extension, p *jsonParser) []byte {
	// auto_disabled is written only when true, so that the encoding (and the checksum)
	// of every other aggregate is what protocol version 1 without it defined.
	if e.AutoDisabled {
		dst = append(dst, `{"auto_disabled":true,"config":`...)
	} else {
		dst = append(dst, `{"config":`...)
	}
	dst = appendRawWith(dst, e.Config, p)
	dst = append(dst, `,"enabled":`...)
	dst = appendBool(dst, e.Enabled)
	dst = append(dst, `,"id":`...)
	dst = appendQuoted(dst, e.ID)
	dst = append(dst, `,"instances":[`...)
	for i := range e.Instances {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendInstance(dst, &e.Instances[i])
	}
	dst = append(dst, `],"metadata":`...)
	dst = appendRawWith(dst, e.Metadata, p)
	dst = append(dst, `,"retry":`...)
	dst = strconv.AppendInt(dst, int64(e.Retry), 10)
	dst = append(dst, `,"subject":`...)
	dst = appendQuoted(dst, e.Subject)
	dst = append(dst, `,"timeout_ms":`...)
	dst = strconv.AppendInt(dst, int64(e.TimeoutMS), 10)
	dst = append(dst, `,"type":`...)
	dst = appendQuoted(dst, e.Type)
	dst = append(dst, `,"version":`...)
	dst = appendQuoted(dst, e.Version)
	dst = append(dst, `,"versions":[`...)
	for i := range e.Versions {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendVersion(dst, &e.Versions[i], p)
	}
	return append(dst, ']', '}')
}

func appendVersion(dst []byte, v *Version, p *jsonParser) []byte {
	dst = append(dst, `{"config":`...)
	dst = appendRawWith(dst, v.Config, p)
	dst = append(dst, `,"enabled":`...)
	dst = appendBool(dst, v.Enabled)
	dst = append(dst, `,"metadata":`...)
	dst = appendRawWith(dst, v.Metadata, p)
	dst = append(dst, `,"retry":`...)
	dst = strconv.AppendInt(dst, int64(v.Retry), 10)
	dst = append(dst, `,"routing_rules":`...)
	dst = appendRawWith(dst, v.RoutingRules, p)
	dst = append(dst, `,"subject":`...)
	dst = appendQuoted(dst, v.Subject)
	dst = append(dst, `,"timeout_ms":`...)
	dst = strconv.AppendInt(dst, int64(v.TimeoutMS), 10)
	dst = append(dst, `,"version":`...)
	dst = appendQuoted(dst, v.Version)
	return append(dst, '}')
}

func appendInstance(dst []byte, in *Instance) []byte {
	dst = append(dst, `{"enabled":`...)
	dst = appendBool(dst, in.Enabled)
	dst = append(dst, `,"health_status":`...)
	dst = appendQuoted(dst, in.HealthStatus)
	dst = append(dst, `,"instance_id":`...)
	dst = appendQuoted(dst, in.InstanceID)
	dst = append(dst, `,"subject":`...)
	dst = appendQuoted(dst, in.Subject)
	dst = append(dst, `,"weight":`...)
	dst = strconv.AppendInt(dst, int64(in.Weight), 10)
	return append(dst, '}')
}
