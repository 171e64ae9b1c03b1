package listener

// SetProbeURL routes l's probes through url instead of Config.URL, so a test can fault the
// LISTEN connection's network alone. Call it before Start.
func SetProbeURL(l *Listener, url string) { l.probeURL = url }
