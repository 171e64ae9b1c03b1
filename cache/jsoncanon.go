package cache

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/beamline/registry-syncer/rules"
)

// maxDepth bounds the nesting of arrays and objects in a JSON value (rules.MaxJSONNesting).
const maxDepth = rules.MaxJSONNesting

// jsonParser is a strict JSON reader. It either re-emits values in canonical
// form (canonValue) or reads typed scalars for the aggregate decoder. Its
// scratch buffers are reused between calls; a parser is not safe for
// concurrent use.
type jsonParser struct {
	data []byte
	pos  int

	keys []byte      // decoded object keys, a stack shared by nested objects
	mem  []objMember // object members, a stack shared by nested objects
	str  []byte      // decoded string scratch
	tmp  []byte      // member reordering scratch
	skip []byte      // output of skipped values

	// utf16 sorts object keys by their UTF-16 code units, as RFC 8785 (JCS)
	// does, instead of by their UTF-8 bytes (protocol checksum v1). The two
	// orders differ only between a character in U+E000..U+FFFF and one above
	// U+FFFF (see jcsOrderDiffers).
	utf16 bool
}

type objMember struct {
	kStart, kEnd int // decoded key in keys
	start, end   int // `"key":value` in the output
}

// SyntaxError reports malformed JSON, or JSON that breaks a rule of registry documents
// (then Rule names it: nesting, numbers, U+0000; see package rules).
type SyntaxError struct {
	Offset int // byte offset in the input
	Msg    string
	Rule   string // the broken rule's name, "" for malformed JSON
}

func (e *SyntaxError) Error() string {
	if e.Rule != "" {
		return fmt.Sprintf("%s (at offset %d)", e.Msg, e.Offset)
	}
	return fmt.Sprintf("invalid JSON at offset %d: %s", e.Offset, e.Msg)
}

func (p *jsonParser) ruleErr(offset int, v *rules.Violation) error {
	return &SyntaxError{Offset: offset, Msg: v.Msg, Rule: v.Rule}
}

func (p *jsonParser) reset(data []byte) {
	p.data = data
	p.pos = 0
	p.keys = p.keys[:0]
	p.mem = p.mem[:0]
}

func (p *jsonParser) errf(format string, args ...any) error {
	return &SyntaxError{Offset: p.pos, Msg: fmt.Sprintf(format, args...)}
}

func (p *jsonParser) errEOF() error {
	return &SyntaxError{Offset: p.pos, Msg: "unexpected end of input"}
}

func (p *jsonParser) skipWS() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

// peek skips whitespace and returns the next byte (0 at the end of input).
func (p *jsonParser) peek() byte {
	p.skipWS()
	if p.pos >= len(p.data) {
		return 0
	}
	return p.data[p.pos]
}

func (p *jsonParser) expect(c byte) error {
	p.skipWS()
	if p.pos >= len(p.data) {
		return p.errEOF()
	}
	if p.data[p.pos] != c {
		return p.errf("expected %q, found %q", c, p.data[p.pos])
	}
	p.pos++
	return nil
}

// end reports an error unless only whitespace remains.
func (p *jsonParser) end() error {
	p.skipWS()
	if p.pos != len(p.data) {
		return p.errf("unexpected data after JSON value")
	}
	return nil
}

// canonicalJSON appends the canonical form of the single JSON value in data to dst.
func (p *jsonParser) canonicalJSON(dst, data []byte) ([]byte, error) {
	p.reset(data)
	dst, err := p.canonValue(dst, 0)
	if err != nil {
		return dst, err
	}
	return dst, p.end()
}

// canonValue parses the JSON value at the current position and appends its
// canonical form to dst.
func (p *jsonParser) canonValue(dst []byte, depth int) ([]byte, error) {
	switch c := p.peek(); {
	case c == '{':
		return p.canonObject(dst, depth)
	case c == '[':
		return p.canonArray(dst, depth)
	case c == '"':
		return p.canonString(dst)
	case c == 't':
		return p.literal(dst, "true")
	case c == 'f':
		return p.literal(dst, "false")
	case c == 'n':
		return p.literal(dst, "null")
	case c == '-' || (c >= '0' && c <= '9'):
		return p.canonNumber(dst)
	case c == 0 && p.pos >= len(p.data):
		return dst, p.errEOF()
	default:
		return dst, p.errf("unexpected character %q", c)
	}
}

func (p *jsonParser) literal(dst []byte, lit string) ([]byte, error) {
	if !bytes.HasPrefix(p.data[p.pos:], []byte(lit)) {
		if len(p.data)-p.pos < len(lit) && bytes.HasPrefix([]byte(lit), p.data[p.pos:]) {
			p.pos = len(p.data)
			return dst, p.errEOF()
		}
		return dst, p.errf("invalid literal")
	}
	p.pos += len(lit)
	return append(dst, lit...), nil
}

func (p *jsonParser) canonArray(dst []byte, depth int) ([]byte, error) {
	if depth >= maxDepth {
		return dst, p.ruleErr(p.pos, rules.NestingViolation())
	}
	p.pos++ // '['
	dst = append(dst, '[')
	if p.peek() == ']' {
		p.pos++
		return append(dst, ']'), nil
	}
	for {
		var err error
		if dst, err = p.canonValue(dst, depth+1); err != nil {
			return dst, err
		}
		switch p.peek() {
		case ',':
			p.pos++
			dst = append(dst, ',')
		case ']':
			p.pos++
			return append(dst, ']'), nil
		case 0:
			if p.pos >= len(p.data) {
				return dst, p.errEOF()
			}
			fallthrough
		default:
			return dst, p.errf("expected ',' or ']' in array")
		}
	}
}

func (p *jsonParser) canonObject(dst []byte, depth int) ([]byte, error) {
	if depth >= maxDepth {
		return dst, p.ruleErr(p.pos, rules.NestingViolation())
	}
	p.pos++ // '{'
	objStart := len(dst)
	dst = append(dst, '{')
	if p.peek() == '}' {
		p.pos++
		return append(dst, '}'), nil
	}
	base, keyBase := len(p.mem), len(p.keys)
	sorted := true
	for {
		switch p.peek() {
		case '"':
		case 0:
			if p.pos >= len(p.data) {
				return dst, p.errEOF()
			}
			fallthrough
		default:
			return dst, p.errf("expected string object key")
		}
		kStart := len(p.keys)
		keyPos := p.pos
		var err error
		if p.keys, err = p.decodeString(p.keys); err != nil {
			return dst, err
		}
		kEnd := len(p.keys)
		if n := len(p.mem); n > base && sorted {
			prev := p.mem[n-1]
			switch p.compareKeys(p.keys[prev.kStart:prev.kEnd], p.keys[kStart:kEnd]) {
			case 0:
				return dst, &SyntaxError{Offset: keyPos, Msg: fmt.Sprintf("duplicate object key %q", p.keys[kStart:kEnd])}
			case 1:
				sorted = false
			}
		}
		if len(p.mem) > base {
			dst = append(dst, ',')
		}
		mStart := len(dst)
		dst = appendQuoted(dst, p.keys[kStart:kEnd])
		if err := p.expect(':'); err != nil {
			return dst, err
		}
		dst = append(dst, ':')
		if dst, err = p.canonValue(dst, depth+1); err != nil {
			return dst, err
		}
		p.mem = append(p.mem, objMember{kStart: kStart, kEnd: kEnd, start: mStart, end: len(dst)})
		c := p.peek()
		if c == ',' {
			p.pos++
			continue
		}
		if c == '}' {
			p.pos++
			break
		}
		if p.pos >= len(p.data) {
			return dst, p.errEOF()
		}
		return dst, p.errf("expected ',' or '}' in object")
	}
	if !sorted {
		members := p.mem[base:]
		keys := p.keys
		slices.SortFunc(members, func(a, b objMember) int {
			return p.compareKeys(keys[a.kStart:a.kEnd], keys[b.kStart:b.kEnd])
		})
		for i := 1; i < len(members); i++ {
			if bytes.Equal(keys[members[i-1].kStart:members[i-1].kEnd], keys[members[i].kStart:members[i].kEnd]) {
				return dst, p.errf("duplicate object key %q", keys[members[i].kStart:members[i].kEnd])
			}
		}
		off := objStart + 1
		p.tmp = append(p.tmp[:0], dst[off:]...)
		dst = dst[:off]
		for i, m := range members {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, p.tmp[m.start-off:m.end-off]...)
		}
	}
	p.mem = p.mem[:base]
	p.keys = p.keys[:keyBase]
	return append(dst, '}'), nil
}

// compareKeys orders two decoded object keys: bytewise, or by UTF-16 code
// units when p.utf16 is set.
func (p *jsonParser) compareKeys(a, b []byte) int {
	if !p.utf16 {
		return bytes.Compare(a, b)
	}
	return compareUTF16(a, b)
}

// compareUTF16 compares two valid UTF-8 strings by their UTF-16 code units
// (RFC 8785 §3.2.3). It equals the bytewise (code point) order except that a
// character in U+E000..U+FFFF sorts after every character above U+FFFF, whose
// UTF-16 form starts with a surrogate (U+D800..U+DBFF).
func compareUTF16(a, b []byte) int {
	for len(a) > 0 && len(b) > 0 {
		ra, na := utf8.DecodeRune(a)
		rb, nb := utf8.DecodeRune(b)
		if ra != rb {
			if utf16Rank(ra) < utf16Rank(rb) {
				return -1
			}
			return 1
		}
		a, b = a[na:], b[nb:]
	}
	switch {
	case len(a) < len(b):
		return -1
	case len(a) > len(b):
		return 1
	}
	return 0
}

// utf16Rank maps a code point to a number that sorts like its UTF-16 form.
func utf16Rank(r rune) int {
	if r >= 0xE000 && r <= 0xFFFF {
		return int(r) + 0x200000
	}
	return int(r)
}

// jcsOrderDiffers reports whether raw JSON text could hold two object keys
// that UTF-8 and UTF-16 order differently: it holds both a character in
// U+E000..U+FFFF (lead byte 0xEE or 0xEF) and one above U+FFFF (0xF0..0xF4).
func jcsOrderDiffers(raw []byte) bool {
	high, astral := false, false
	for _, c := range raw {
		switch {
		case c < 0xEE:
		case c < 0xF0:
			high = true
		default:
			astral = true
		}
	}
	return high && astral
}

// canonString appends the canonical form of the string at the current position.
func (p *jsonParser) canonString(dst []byte) ([]byte, error) {
	// Fast path: no escapes means the canonical form is the input itself,
	// since '"', '\\' and control characters cannot appear unescaped.
	start := p.pos + 1
	for i := start; i < len(p.data); i++ {
		c := p.data[i]
		if c == '"' {
			seg := p.data[start:i]
			if !utf8.Valid(seg) {
				return dst, p.errf("invalid UTF-8 in string")
			}
			p.pos = i + 1
			dst = append(dst, '"')
			dst = append(dst, seg...)
			return append(dst, '"'), nil
		}
		if c == '\\' || c < 0x20 {
			break
		}
	}
	var err error
	if p.str, err = p.decodeString(p.str[:0]); err != nil {
		return dst, err
	}
	return appendQuoted(dst, p.str), nil
}

// decodeString decodes the string at the current position (which must be '"')
// and appends its UTF-8 bytes to dst.
func (p *jsonParser) decodeString(dst []byte) ([]byte, error) {
	p.pos++ // '"'
	mark := len(dst)
	start := p.pos
	for i := start; i < len(p.data); i++ {
		c := p.data[i]
		if c == '"' {
			dst = append(dst, p.data[start:i]...)
			p.pos = i + 1
			if !utf8.Valid(dst[mark:]) {
				return dst, p.errf("invalid UTF-8 in string")
			}
			return dst, nil
		}
		if c < 0x20 {
			p.pos = i
			return dst, p.errf("control character %#02x in string", c)
		}
		if c != '\\' {
			continue
		}
		dst = append(dst, p.data[start:i]...)
		p.pos = i
		if i+1 >= len(p.data) {
			p.pos = len(p.data)
			return dst, p.errEOF()
		}
		switch e := p.data[i+1]; e {
		case '"', '\\', '/':
			dst = append(dst, e)
			i++
		case 'b':
			dst = append(dst, '\b')
			i++
		case 'f':
			dst = append(dst, '\f')
			i++
		case 'n':
			dst = append(dst, '\n')
			i++
		case 'r':
			dst = append(dst, '\r')
			i++
		case 't':
			dst = append(dst, '\t')
			i++
		case 'u':
			r, ok := hex4(p.data[i+2:])
			if !ok {
				return dst, p.errf("invalid \\u escape")
			}
			if r == 0 {
				return dst, p.ruleErr(i, rules.NULViolation())
			}
			i += 5
			if utf16.IsSurrogate(r) {
				// A high surrogate must be followed by an escaped low surrogate.
				var r2 rune = -1
				if r < 0xdc00 && i+2 < len(p.data) && p.data[i+1] == '\\' && p.data[i+2] == 'u' {
					if v, ok := hex4(p.data[i+3:]); ok {
						r2 = v
					}
				}
				dec := utf16.DecodeRune(r, r2)
				if dec == utf8.RuneError {
					return dst, p.errf("invalid UTF-16 surrogate in \\u escape")
				}
				r = dec
				i += 6
			}
			dst = utf8.AppendRune(dst, r)
		default:
			return dst, p.errf("invalid escape \\%c", e)
		}
		start = i + 1
	}
	p.pos = len(p.data)
	return dst, p.errEOF()
}

func hex4(b []byte) (rune, bool) {
	if len(b) < 4 {
		return 0, false
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			c = c - 'A' + 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

// scanNumber consumes a JSON number and returns its literal and whether it is
// a plain integer (no fraction, no exponent).
func (p *jsonParser) scanNumber() (lit []byte, integer bool, err error) {
	d := p.data
	start := p.pos
	i := start
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i >= len(d):
		p.pos = i
		return nil, false, p.errEOF()
	case d[i] == '0':
		i++
	case d[i] >= '1' && d[i] <= '9':
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	default:
		p.pos = i
		return nil, false, p.errf("invalid number")
	}
	integer = true
	if i < len(d) && d[i] == '.' {
		integer = false
		i++
		j := i
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
		if i == j {
			p.pos = i
			return nil, false, p.errf("invalid number: no digits after '.'")
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		integer = false
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		j := i
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
		if i == j {
			p.pos = i
			return nil, false, p.errf("invalid number: no digits in exponent")
		}
	}
	p.pos = i
	return d[start:i], integer, nil
}

func (p *jsonParser) canonNumber(dst []byte) ([]byte, error) {
	start := p.pos
	lit, integer, err := p.scanNumber()
	if err != nil {
		return dst, err
	}
	digits := len(lit)
	if lit[0] == '-' {
		digits--
	}
	// Integers of up to 15 digits are exactly representable and print as themselves.
	if integer && digits <= 15 {
		if len(lit) == 2 && lit[0] == '-' && lit[1] == '0' {
			return append(dst, '0'), nil
		}
		return append(dst, lit...), nil
	}
	// Anything else must round-trip through a double (I-JSON): the canonical form then has
	// the value written, so every reader gets what the writer stored.
	f, ok := rules.ParseNumber(string(lit))
	if !ok {
		return dst, p.ruleErr(start, rules.NumberViolation(string(lit)))
	}
	return appendESNumber(dst, f), nil
}

// appendESNumber appends f formatted as ECMAScript Number.prototype.toString
// (and JSON.stringify) does. f must be finite.
func appendESNumber(dst []byte, f float64) []byte {
	if f == 0 {
		return append(dst, '0') // also -0
	}
	if f < 0 {
		dst = append(dst, '-')
		f = -f
	}
	var buf [32]byte
	b := strconv.AppendFloat(buf[:0], f, 'e', -1, 64) // d[.ddd]e±XX, shortest round-trip
	var digits [24]byte
	k := 0
	i := 0
	for ; b[i] != 'e'; i++ {
		if b[i] != '.' {
			digits[k] = b[i]
			k++
		}
	}
	i++ // 'e'
	neg := b[i] == '-'
	i++
	exp := 0
	for ; i < len(b); i++ {
		exp = exp*10 + int(b[i]-'0')
	}
	if neg {
		exp = -exp
	}
	n := exp + 1 // value = 0.d1d2...dk × 10^n
	switch {
	case k <= n && n <= 21:
		dst = append(dst, digits[:k]...)
		for j := k; j < n; j++ {
			dst = append(dst, '0')
		}
	case 0 < n && n <= 21:
		dst = append(dst, digits[:n]...)
		dst = append(dst, '.')
		dst = append(dst, digits[n:k]...)
	case -6 < n && n <= 0:
		dst = append(dst, '0', '.')
		for j := n; j < 0; j++ {
			dst = append(dst, '0')
		}
		dst = append(dst, digits[:k]...)
	default:
		dst = append(dst, digits[0])
		if k > 1 {
			dst = append(dst, '.')
			dst = append(dst, digits[1:k]...)
		}
		dst = append(dst, 'e')
		e := n - 1
		if e >= 0 {
			dst = append(dst, '+')
		} else {
			dst = append(dst, '-')
			e = -e
		}
		dst = strconv.AppendInt(dst, int64(e), 10)
	}
	return dst
}

const hexDigits = "0123456789abcdef"

// appendQuoted appends s as a canonical JSON string. s must be valid UTF-8.
func appendQuoted[S ~string | ~[]byte](dst []byte, s S) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"':
			dst = append(dst, '\\', '"')
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// ---- typed reads used by the aggregate decoder ----

// isNull consumes a null literal if one is next.
func (p *jsonParser) isNull() (bool, error) {
	if p.peek() != 'n' {
		return false, nil
	}
	_, err := p.literal(nil, "null")
	return err == nil, err
}

// nextKey advances to the next member of the object being read and returns its
// decoded key (valid until the next read); ok is false at the closing '}'.
// first must be true for the first call after the opening '{'.
func (p *jsonParser) nextKey(first *bool) (key []byte, ok bool, err error) {
	c := p.peek()
	if c == '}' {
		p.pos++
		return nil, false, nil
	}
	if !*first {
		if c != ',' {
			if p.pos >= len(p.data) {
				return nil, false, p.errEOF()
			}
			return nil, false, p.errf("expected ',' or '}' in object")
		}
		p.pos++
		c = p.peek()
	}
	*first = false
	if c != '"' {
		if p.pos >= len(p.data) {
			return nil, false, p.errEOF()
		}
		return nil, false, p.errf("expected string object key")
	}
	if key, err = p.stringBytes(); err != nil {
		return nil, false, err
	}
	if err = p.expect(':'); err != nil {
		return nil, false, err
	}
	return key, true, nil
}

// stringBytes reads a string (the next byte must be '"') and returns its
// decoded bytes, which alias the input or scratch and are valid until the next read.
func (p *jsonParser) stringBytes() ([]byte, error) {
	start := p.pos + 1
	for i := start; i < len(p.data); i++ {
		c := p.data[i]
		if c == '"' {
			seg := p.data[start:i]
			if !utf8.Valid(seg) {
				return nil, p.errf("invalid UTF-8 in string")
			}
			p.pos = i + 1
			return seg, nil
		}
		if c == '\\' || c < 0x20 {
			break
		}
	}
	var err error
	p.str, err = p.decodeString(p.str[:0])
	return p.str, err
}

// readString reads a string or null ("").
func (p *jsonParser) readString() (string, error) {
	switch p.peek() {
	case '"':
		b, err := p.stringBytes()
		return string(b), err
	case 'n':
		_, err := p.literal(nil, "null")
		return "", err
	}
	return "", p.typeErr("string")
}

// readEnum reads a string or null, returning a shared constant when it is one
// of the given values (so that common values do not allocate).
func (p *jsonParser) readEnum(values ...string) (string, error) {
	if p.peek() != '"' {
		return p.readString()
	}
	b, err := p.stringBytes()
	if err != nil {
		return "", err
	}
	for _, v := range values {
		if string(b) == v {
			return v, nil
		}
	}
	return string(b), nil
}

func (p *jsonParser) readInt() (int, error) {
	switch c := p.peek(); {
	case c == 'n':
		_, err := p.literal(nil, "null")
		return 0, err
	case c != '-' && (c < '0' || c > '9'):
		return 0, p.typeErr("integer")
	}
	start := p.pos
	lit, integer, err := p.scanNumber()
	if err != nil {
		return 0, err
	}
	if !integer {
		return 0, &SyntaxError{Offset: start, Msg: fmt.Sprintf("expected integer, found %s", lit)}
	}
	v, err := strconv.ParseInt(string(lit), 10, 32)
	if err != nil {
		return 0, &SyntaxError{Offset: start, Msg: fmt.Sprintf("integer %s out of range", lit)}
	}
	return int(v), nil
}

func (p *jsonParser) readInt64() (int64, error) {
	if c := p.peek(); c != '-' && (c < '0' || c > '9') {
		return 0, p.typeErr("integer")
	}
	start := p.pos
	lit, integer, err := p.scanNumber()
	if err != nil {
		return 0, err
	}
	if !integer {
		return 0, &SyntaxError{Offset: start, Msg: fmt.Sprintf("expected integer, found %s", lit)}
	}
	v, err := strconv.ParseInt(string(lit), 10, 64)
	if err != nil {
		return 0, &SyntaxError{Offset: start, Msg: fmt.Sprintf("integer %s out of range", lit)}
	}
	return v, nil
}

func (p *jsonParser) readBool() (bool, error) {
	switch p.peek() {
	case 't':
		_, err := p.literal(nil, "true")
		return true, err
	case 'f':
		_, err := p.literal(nil, "false")
		return false, err
	case 'n':
		_, err := p.literal(nil, "null")
		return false, err
	}
	return false, p.typeErr("boolean")
}

// skipValue validates and discards the next value.
func (p *jsonParser) skipValue() error {
	var err error
	p.skip, err = p.canonValue(p.skip[:0], 0)
	return err
}

func (p *jsonParser) typeErr(want string) error {
	if p.pos >= len(p.data) {
		return p.errEOF()
	}
	return p.errf("expected %s, found %q", want, p.data[p.pos])
}
