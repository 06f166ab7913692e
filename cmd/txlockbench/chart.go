package main

import (
	"fmt"
	"html"
	"math"
	"os"
	"strings"
)

// chart collects the figures of a run for -svg: each scenario adds the
// rows it measured.
var chart chartData

type chartData struct {
	When        string
	Uncontended []bar // throughput against a bare transaction
	HotGoodput  []bar // goodput against the serial bound
	HotP99      []bar // p99 latency, ms
	FairMS      float64
}

type bar struct {
	Label string
	Value float64
}

// Chart geometry, in pixels.
const (
	chartWidth  = 760
	labelWidth  = 170
	valueWidth  = 70
	barHeight   = 18
	barGap      = 6
	panelTop    = 44
	panelBottom = 26
)

// writeSVG draws the three panels of a run into path: uncontended overhead,
// hot-key goodput and hot-key p99 (log scale, with the fair bound marked).
func writeSVG(path string, c chartData) error {
	var panels []string
	y := 0
	add := func(p string, h int) {
		panels = append(panels, fmt.Sprintf(`<g transform="translate(0,%d)">%s</g>`, y, p))
		y += h
	}
	if len(c.Uncontended) > 0 {
		add(linearPanel("Uncontended check-then-insert, 8 workers: throughput / bare transaction", c.Uncontended, 1.2, "%.2f", 1))
	}
	if len(c.HotGoodput) > 0 {
		add(linearPanel("Hot key, 32 workers in 4 processes: goodput / serial bound", c.HotGoodput, 1.2, "%.2f", 1))
	}
	if len(c.HotP99) > 0 {
		add(logPanel("Hot key: p99 latency, ms (log scale; dashed: the fair bound)", c.HotP99, c.FairMS))
	}
	if len(panels) == 0 {
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", chartWidth, y+28)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	for _, p := range panels {
		b.WriteString(p + "\n")
	}
	fmt.Fprintf(&b, `<text x="8" y="%d" fill="#666" font-size="11">%s</text>`+"\n", y+18, html.EscapeString("txlockbench, "+c.When))
	b.WriteString("</svg>\n")
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func panelHeight(n int) int { return panelTop + n*(barHeight+barGap) + panelBottom }

// linearPanel draws bars from 0 to max, with a reference line at ref.
func linearPanel(title string, bars []bar, maxV float64, format string, ref float64) (string, int) {
	for _, b := range bars {
		maxV = math.Max(maxV, b.Value*1.05)
	}
	scale := func(v float64) float64 { return float64(chartWidth-labelWidth-valueWidth) * v / maxV }
	var s strings.Builder
	header(&s, title)
	for i, b := range bars {
		y := panelTop + i*(barHeight+barGap)
		row(&s, y, b.Label, scale(b.Value), fmt.Sprintf(format, b.Value), barColor(b.Label))
	}
	refLine(&s, labelWidth+scale(ref), len(bars), fmt.Sprintf(format, ref))
	return s.String(), panelHeight(len(bars))
}

// logPanel draws bars on a log scale from 1 to the largest value.
func logPanel(title string, bars []bar, ref float64) (string, int) {
	maxV := 10.0
	for _, b := range bars {
		maxV = math.Max(maxV, b.Value*1.2)
	}
	span := math.Log10(maxV)
	scale := func(v float64) float64 {
		return float64(chartWidth-labelWidth-valueWidth) * math.Log10(math.Max(v, 1)) / span
	}
	var s strings.Builder
	header(&s, title)
	for i, b := range bars {
		y := panelTop + i*(barHeight+barGap)
		row(&s, y, b.Label, scale(b.Value), fmt.Sprintf("%.0f", b.Value), barColor(b.Label))
	}
	if ref > 0 {
		refLine(&s, labelWidth+scale(ref), len(bars), fmt.Sprintf("%.0f", ref))
	}
	return s.String(), panelHeight(len(bars))
}

func header(s *strings.Builder, title string) {
	fmt.Fprintf(s, `<text x="8" y="24" font-size="14" font-weight="bold">%s</text>`, html.EscapeString(title))
}

func row(s *strings.Builder, y int, label string, w float64, value, color string) {
	fmt.Fprintf(s, `<text x="%d" y="%d" text-anchor="end">%s</text>`, labelWidth-8, y+barHeight-5, html.EscapeString(label))
	fmt.Fprintf(s, `<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>`, labelWidth, y, math.Max(w, 1), barHeight, color)
	fmt.Fprintf(s, `<text x="%.1f" y="%d">%s</text>`, float64(labelWidth)+math.Max(w, 1)+6, y+barHeight-5, html.EscapeString(value))
}

func refLine(s *strings.Builder, x float64, n int, label string) {
	bottom := panelTop + n*(barHeight+barGap)
	fmt.Fprintf(s, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#333" stroke-dasharray="4 3"/>`, x, panelTop-6, x, bottom)
	fmt.Fprintf(s, `<text x="%.1f" y="%d" fill="#333" font-size="11" text-anchor="middle">%s</text>`, x, bottom+14, html.EscapeString(label))
}

// barColor tells txlock's rows from the baselines and floors (grey).
func barColor(label string) string {
	switch {
	case label == "bare", label == "bare-cancellable", label == "retry-only", label == "add-poll-delete",
		strings.HasPrefix(label, "bare+"):
		return "#b0b0b0"
	}
	return "#3b7dd8"
}
