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

// hash returns the SHA-256 of the canonical encoding of the normalized e.
func (n *normalizer) hash(e *Extension) [32]byte {
	n.buf = appendAggregate(n.buf[:0], e)
	return sha256.Sum256(n.buf)
}

func appendRaw(dst []byte, raw []byte) []byte {
	if len(raw) == 0 {
		return append(dst, '{', '}')
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
func appendAggregate(dst []byte, e *Extension) []byte {
	// auto_disabled is written only when true, so that the encoding (and the checksum)
	// of every other aggregate is what protocol version 1 without it defined.
	if e.AutoDisabled {
		dst = append(dst, `{"auto_disabled":true,"config":`...)
	} else {
		dst = append(dst, `{"config":`...)
	}
	dst = appendRaw(dst, e.Config)
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
	dst = appendRaw(dst, e.Metadata)
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
		dst = appendVersion(dst, &e.Versions[i])
	}
	return append(dst, ']', '}')
}

func appendVersion(dst []byte, v *Version) []byte {
	dst = append(dst, `{"config":`...)
	dst = appendRaw(dst, v.Config)
	dst = append(dst, `,"enabled":`...)
	dst = appendBool(dst, v.Enabled)
	dst = append(dst, `,"metadata":`...)
	dst = appendRaw(dst, v.Metadata)
	dst = append(dst, `,"retry":`...)
	dst = strconv.AppendInt(dst, int64(v.Retry), 10)
	dst = append(dst, `,"routing_rules":`...)
	dst = appendRaw(dst, v.RoutingRules)
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
