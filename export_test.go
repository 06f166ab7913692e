package txlock

// Len reports how many keys are held or waited for right now. Tests use
// it to check that nothing is left behind.
func (l *LocalLocker) Len() int { return l.m.Len() }

// Waiters reports how many callers hold or wait for key right now.
func (l *LocalLocker) Waiters(key string) int {
	if !l.m.Held(key) {
		return 0
	}
	return 1 + l.m.Waiters(key)
}
