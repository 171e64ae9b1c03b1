package listener

// SetProbeURL routes l's probes through url instead of Config.URL, so a test can fault the
// LISTEN connection's network alone. Call it before Start.
func SetProbeURL(l *Listener, url string) { l.probeURL = url }

// ProbesHeard is the highest sequence number of l's own probes heard back so far.
func ProbesHeard(l *Listener) uint64 { return l.heardSeq.Load() }
