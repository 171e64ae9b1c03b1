package cache

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf8"
)

// Encode returns the wire document of the whole snapshot:
//
//	{"revision":N,"checksum":"<hex>","checksum_v2":"<hex>","source":"database","count":N,"extensions":[<aggregate>,...]}
//
// with the extensions in ascending id order, each in canonical form (see
// Canonical). It computes the v1 checksum (Checksum) if it is not known yet.
func (s *Snapshot) Encode() ([]byte, error) {
	if !utf8.ValidString(s.source) {
		return nil, errors.New("cache: encode snapshot: source is not valid UTF-8")
	}
	// Size the buffer from the first extensions to avoid regrowing a large one.
	buf := make([]byte, 0, 4096)
	buf = append(buf, `{"revision":`...)
	buf = strconv.AppendInt(buf, s.revision, 10)
	buf = append(buf, `,"checksum":"`...)
	buf = append(buf, s.Checksum()...)
	buf = append(buf, `","checksum_v2":"`...)
	buf = append(buf, s.checksumV2...)
	buf = append(buf, `","source":`...)
	buf = appendQuoted(buf, s.source)
	buf = append(buf, `,"count":`...)
	buf = strconv.AppendInt(buf, int64(s.count), 10)
	buf = append(buf, `,"extensions":[`...)
	i := 0
	s.order.each(func(en entry) bool {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = appendAggregate(buf, en.e)
		if i == 63 && s.count > 128 {
			need := (len(buf)/64 + 1) * (s.count - 63) * 9 / 8
			buf = slices.Grow(buf, need)
		}
		i++
		return true
	})
	return append(buf, ']', '}'), nil
}

// Decode parses a wire document produced by Encode, validates every extension
// and verifies the newest checksum the document carries against the content:
// "checksum_v2" when present (then the v1 "checksum" is not verified, and
// Checksum computes it from the content when asked), else "checksum" (a
// mismatch wraps ErrChecksum and gives both values). Unknown object keys are
// ignored; a repeated field, duplicate keys inside config, metadata or
// routing_rules, invalid UTF-8 and trailing data are errors. "revision",
// "extensions" and one of "checksum" and "checksum_v2" are required; "count",
// when present, must match.
func Decode(data []byte) (*Snapshot, error) {
	s, err := decode(data)
	if err != nil {
		return nil, fmt.Errorf("cache: decode snapshot: %w", err)
	}
	return s, nil
}

func decode(data []byte) (*Snapshot, error) {
	var d decoder
	p := &d.p
	p.reset(data)
	if err := p.expect('{'); err != nil {
		return nil, err
	}
	var (
		revision  int64
		sum, sum2 string
		source    string
		count     int64 = -1
		items     []Extension
		seen      [6]bool
		fieldName = [6]string{"revision", "checksum", "source", "count", "extensions", "checksum_v2"}
	)
	first := true
	for {
		key, ok, err := p.nextKey(&first)
		if err != nil {
			return nil, err
		}
		if !ok {
			break
		}
		f := -1
		switch string(key) {
		case "revision":
			f = 0
		case "checksum":
			f = 1
		case "source":
			f = 2
		case "count":
			f = 3
		case "extensions":
			f = 4
		case "checksum_v2":
			f = 5
		}
		if f < 0 {
			if err := p.skipValue(); err != nil {
				return nil, err
			}
			continue
		}
		if seen[f] {
			return nil, fmt.Errorf("duplicate key %q", fieldName[f])
		}
		seen[f] = true
		switch f {
		case 0:
			revision, err = p.readInt64()
		case 1:
			sum, err = p.readString()
		case 2:
			source, err = p.readString()
		case 3:
			count, err = p.readInt64()
		case 5:
			sum2, err = p.readString()
		case 4:
			var ok bool
			if items, ok, err = d.extensionsParallel(data); err == nil && !ok {
				items, err = d.extensions(items[:0])
			}
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", fieldName[f], err)
		}
	}
	if err := p.end(); err != nil {
		return nil, err
	}
	for _, f := range []int{0, 4} {
		if !seen[f] {
			return nil, fmt.Errorf("missing key %q", fieldName[f])
		}
	}
	if !seen[1] && !seen[5] {
		return nil, fmt.Errorf("missing key %q", fieldName[1])
	}
	if seen[3] && count != int64(len(items)) {
		return nil, fmt.Errorf("count is %d but the document has %d extensions", count, len(items))
	}

	entries := make([]entry, len(items))
	errs := make([]error, len(items))
	forChunks(len(items), func(lo, hi int) {
		n := getNormalizer()
		defer putNormalizer(n)
		for i := lo; i < hi; i++ {
			if err := n.normalize(&items[i], true); err != nil {
				errs[i] = err
				continue
			}
			entries[i].e = &items[i]
			entries[i].h, entries[i].h1 = n.hashes(&items[i])
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	s, err := build(revision, source, entries)
	if err != nil {
		return nil, err
	}
	if seen[5] {
		if s.checksumV2 != sum2 {
			return nil, fmt.Errorf("%w: document says checksum_v2 %q, recomputed %q", ErrChecksum, sum2, s.checksumV2)
		}
		return s, nil
	}
	if got := s.Checksum(); got != sum {
		return nil, fmt.Errorf("%w: document says %q, recomputed %q", ErrChecksum, sum, got)
	}
	return s, nil
}

// decoder reads extension aggregates, versions and instances from JSON,
// writing raw JSON fields in canonical form.
type decoder struct {
	p  jsonParser
	ar arena
}

type span struct{ start, end int }

// extensionsParallel decodes the extensions array at the current position on
// all CPUs: a quick structural scan finds the elements, which are then
// decoded independently. ok is false when the scan finds the array
// malformed; nothing is consumed then and the caller decodes sequentially to
// report the precise error.
func (d *decoder) extensionsParallel(data []byte) (items []Extension, ok bool, err error) {
	p := &d.p
	if p.peek() != '[' {
		return nil, false, nil
	}
	spans, end, ok := scanArray(data, p.pos)
	if !ok {
		return nil, false, nil
	}
	items = make([]Extension, len(spans))
	errs := make([]error, len(spans))
	forChunks(len(spans), func(lo, hi int) {
		var d decoder
		for i := lo; i < hi; i++ {
			sp := spans[i]
			d.p.reset(data[sp.start:sp.end])
			err := d.extension(&items[i], true)
			if err == nil {
				err = d.p.end()
			}
			if err != nil {
				if se, ok := errors.AsType[*SyntaxError](err); ok {
					se.Offset += sp.start
				}
				errs[i] = fmt.Errorf("[%d]: %w", i, err)
			}
		}
	})
	for _, err := range errs {
		if err != nil {
			return nil, true, err
		}
	}
	p.pos = end
	return items, true, nil
}

// scanArray finds the top-level elements of the JSON array at data[pos]
// without decoding them. It returns their spans and the position after the
// closing ']'; ok is false if the structure is malformed.
func scanArray(data []byte, pos int) (spans []span, end int, ok bool) {
	depth := 0
	start := pos + 1
	for i := start; i < len(data); i++ {
		switch data[i] {
		case '"':
			j := i + 1
			for {
				k := bytes.IndexByte(data[j:], '"')
				if k < 0 {
					return nil, 0, false
				}
				j += k
				bs := 0
				for m := j - 1; m > i && data[m] == '\\'; m-- {
					bs++
				}
				if bs%2 == 0 {
					break
				}
				j++
			}
			i = j
		case '{', '[':
			depth++
		case '}':
			if depth == 0 {
				return nil, 0, false
			}
			depth--
		case ']':
			if depth > 0 {
				depth--
				continue
			}
			if len(trimWS(data[start:i])) > 0 {
				spans = append(spans, span{start, i})
			} else if len(spans) > 0 {
				return nil, 0, false // trailing comma
			}
			return spans, i + 1, true
		case ',':
			if depth == 0 {
				if len(trimWS(data[start:i])) == 0 {
					return nil, 0, false
				}
				spans = append(spans, span{start, i})
				start = i + 1
			}
		}
	}
	return nil, 0, false
}

func (d *decoder) extensions(items []Extension) ([]Extension, error) {
	p := &d.p
	if null, err := p.isNull(); null || err != nil {
		return items, err
	}
	if err := p.expect('['); err != nil {
		return items, err
	}
	if p.peek() == ']' {
		p.pos++
		return items, nil
	}
	for {
		items = append(items, Extension{})
		if err := d.extension(&items[len(items)-1], true); err != nil {
			return items, fmt.Errorf("[%d]: %w", len(items)-1, err)
		}
		switch p.peek() {
		case ',':
			p.pos++
		case ']':
			p.pos++
			return items, nil
		default:
			if p.pos >= len(p.data) {
				return items, p.errEOF()
			}
			return items, p.errf("expected ',' or ']' in array")
		}
	}
}

var extensionFields = [...]string{"id", "type", "subject", "timeout_ms", "retry", "enabled", "version", "config", "metadata", "versions", "instances", "auto_disabled"}

// extension reads an aggregate object into e. With children false, versions
// and instances are checked for syntax and ignored.
func (d *decoder) extension(e *Extension, children bool) error {
	p := &d.p
	d.ar.reset()
	if err := p.expect('{'); err != nil {
		return err
	}
	var seen uint32
	first := true
	for {
		key, ok, err := p.nextKey(&first)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		f := -1
		switch string(key) {
		case "id":
			f = 0
		case "type":
			f = 1
		case "subject":
			f = 2
		case "timeout_ms":
			f = 3
		case "retry":
			f = 4
		case "enabled":
			f = 5
		case "version":
			f = 6
		case "config":
			f = 7
		case "metadata":
			f = 8
		case "versions":
			f = 9
		case "instances":
			f = 10
		case "auto_disabled":
			f = 11
		}
		if f < 0 {
			if err := p.skipValue(); err != nil {
				return err
			}
			continue
		}
		if seen&(1<<f) != 0 {
			return fmt.Errorf("duplicate key %q", extensionFields[f])
		}
		seen |= 1 << f
		switch f {
		case 0:
			e.ID, err = p.readString()
		case 1:
			e.Type, err = p.readEnum(TypePre, TypeValidator, TypePost, TypeProvider)
		case 2:
			e.Subject, err = p.readString()
		case 3:
			e.TimeoutMS, err = p.readInt()
		case 4:
			e.Retry, err = p.readInt()
		case 5:
			e.Enabled, err = p.readBool()
		case 6:
			e.Version, err = p.readEnum("v1", "v2", "v3")
		case 7:
			err = d.raw(-1, fConfig)
		case 8:
			err = d.raw(-1, fMetadata)
		case 9:
			if children {
				err = d.versions(e)
			} else {
				err = p.skipValue()
			}
		case 10:
			if children {
				err = d.instances(e)
			} else {
				err = p.skipValue()
			}
		case 11:
			e.AutoDisabled, err = p.readBool()
		}
		if err != nil {
			return fmt.Errorf("%s: %w", extensionFields[f], err)
		}
	}
	d.ar.materialize(e)
	return nil
}

// raw reads a JSON value in canonical form into the arena as field (vi, f).
func (d *decoder) raw(vi int32, f uint8) error {
	start := len(d.ar.buf)
	buf, err := d.p.canonValue(d.ar.buf, 0)
	if err != nil {
		d.ar.buf = buf[:start]
		return err
	}
	if string(buf[start:]) == "null" {
		d.ar.buf = buf[:start]
		d.ar.add(vi, f, -1)
		return nil
	}
	d.ar.buf = buf
	d.ar.add(vi, f, start)
	return nil
}

func (d *decoder) versions(e *Extension) error {
	p := &d.p
	if null, err := p.isNull(); null || err != nil {
		return err
	}
	if err := p.expect('['); err != nil {
		return err
	}
	e.Versions = []Version{}
	if p.peek() == ']' {
		p.pos++
		return nil
	}
	for {
		e.Versions = append(e.Versions, Version{})
		vi := len(e.Versions) - 1
		if err := d.version(&e.Versions[vi], int32(vi)); err != nil {
			return fmt.Errorf("[%d]: %w", vi, err)
		}
		switch p.peek() {
		case ',':
			p.pos++
		case ']':
			p.pos++
			return nil
		default:
			if p.pos >= len(p.data) {
				return p.errEOF()
			}
			return p.errf("expected ',' or ']' in array")
		}
	}
}

var versionFields = [...]string{"version", "subject", "timeout_ms", "retry", "enabled", "config", "metadata", "routing_rules"}

// version reads a version object into v, the vi-th version of the extension
// being decoded.
func (d *decoder) version(v *Version, vi int32) error {
	p := &d.p
	if err := p.expect('{'); err != nil {
		return err
	}
	var seen uint32
	first := true
	for {
		key, ok, err := p.nextKey(&first)
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		f := -1
		switch string(key) {
		case "version":
			f = 0
		case "subject":
			f = 1
		case "timeout_ms":
			f = 2
		case "retry":
			f = 3
		case "enabled":
			f = 4
		case "config":
			f = 5
		case "metadata":
			f = 6
		case "routing_rules":
			f = 7
		}
		if f < 0 {
			if err := p.skipValue(); err != nil {
				return err
			}
			continue
		}
		if seen&(1<<f) != 0 {
			return fmt.Errorf("duplicate key %q", versionFields[f])
		}
		seen |= 1 << f
		switch f {
		case 0:
			v.Version, err = p.readEnum("v1", "v2", "v3")
		case 1:
			v.Subject, err = p.readString()
		case 2:
			v.TimeoutMS, err = p.readInt()
		case 3:
			v.Retry, err = p.readInt()
		case 4:
			v.Enabled, err = p.readBool()
		case 5:
			err = d.raw(vi, fConfig)
		case 6:
			err = d.raw(vi, fMetadata)
		case 7:
			err = d.raw(vi, fRules)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", versionFields[f], err)
		}
	}
}

func (d *decoder) instances(e *Extension) error {
	p := &d.p
	if null, err := p.isNull(); null || err != nil {
		return err
	}
	if err := p.expect('['); err != nil {
		return err
	}
	e.Instances = []Instance{}
	if p.peek() == ']' {
		p.pos++
		return nil
	}
	for {
		e.Instances = append(e.Instances, Instance{})
		if err := d.instance(&e.Instances[len(e.Instances)-1]); err != nil {
			return fmt.Errorf("[%d]: %w", len(e.Instances)-1, err)
		}
		switch p.peek() {
		case ',':
			p.pos++
		case ']':
			p.pos++
			return nil
		default:
			if p.pos >= len(p.data) {
				return p.errEOF()
			}
			return p.errf("expected ',' or ']' in array")
		}
	}
}

var instanceFields = [...]string{"instance_id", "subject", "weight", "enabled", "health_status"}

func (d *decoder) instance(in *Instance) error {
	p := &d.p
	if err := p.expect('{'); err != nil {
		return err
	}
	var seen uint32
	first := true
	for {
		key, ok, err := p.nextKey(&first)
		if err != nil {
			return err
		}
		if !ok {
			return nil
		}
		f := -1
		switch string(key) {
		case "instance_id":
			f = 0
		case "subject":
			f = 1
		case "weight":
			f = 2
		case "enabled":
			f = 3
		case "health_status":
			f = 4
		}
		if f < 0 {
			if err := p.skipValue(); err != nil {
				return err
			}
			continue
		}
		if seen&(1<<f) != 0 {
			return fmt.Errorf("duplicate key %q", instanceFields[f])
		}
		seen |= 1 << f
		switch f {
		case 0:
			in.InstanceID, err = p.readString()
		case 1:
			in.Subject, err = p.readString()
		case 2:
			in.Weight, err = p.readInt()
		case 3:
			in.Enabled, err = p.readBool()
		case 4:
			in.HealthStatus, err = p.readEnum(HealthHealthy, HealthDegraded, HealthUnhealthy, HealthUnknown)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", instanceFields[f], err)
		}
	}
}

// decodeExtensionValue decodes a standalone aggregate (children true) or an
// extension's own fields (children false).
func (d *decoder) decodeExtensionValue(data []byte, children bool) (*Extension, error) {
	d.p.reset(data)
	e := new(Extension)
	if err := d.extension(e, children); err != nil {
		return nil, err
	}
	if err := d.p.end(); err != nil {
		return nil, err
	}
	return e, nil
}

func (d *decoder) decodeVersionValue(data []byte) (Version, error) {
	d.p.reset(data)
	d.ar.reset()
	tmp := Extension{Versions: make([]Version, 1)}
	if err := d.version(&tmp.Versions[0], 0); err != nil {
		return Version{}, err
	}
	if err := d.p.end(); err != nil {
		return Version{}, err
	}
	d.ar.materialize(&tmp)
	return tmp.Versions[0], nil
}

func (d *decoder) decodeInstanceValue(data []byte) (Instance, error) {
	d.p.reset(data)
	var in Instance
	if err := d.instance(&in); err != nil {
		return Instance{}, err
	}
	if err := d.p.end(); err != nil {
		return Instance{}, err
	}
	return in, nil
}
