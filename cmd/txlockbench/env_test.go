package main

import "testing"

func TestParseCPULine(t *testing.T) {
	// user nice system idle iowait irq softirq steal guest guest_nice
	busy, steal, total := parseCPULine("cpu  1000 10 500 8000 100 20 30 400 300 5")
	if want := (1000 + 10 + 500 + 20 + 30) / 100.0; busy != want {
		t.Errorf("busy = %v, want %v (user, nice, system, irq, softirq)", busy, want)
	}
	if steal != 4 {
		t.Errorf("steal = %v, want 4", steal)
	}
	// guest and guest_nice are already inside user and nice.
	if want := (1000 + 10 + 500 + 8000 + 100 + 20 + 30 + 400) / 100.0; total != want {
		t.Errorf("total = %v, want %v", total, want)
	}
	if b, s, tot := parseCPULine("intr 1 2 3"); b != 0 || s != 0 || tot != 0 {
		t.Errorf("a line that is not cpu's gave %v %v %v", b, s, tot)
	}
}
