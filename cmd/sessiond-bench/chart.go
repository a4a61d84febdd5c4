package main

import (
	"fmt"
	"html"
	"math"
	"slices"
	"strings"
)

// chartSeries is one line of a panel: one system on one store shape.
type chartSeries struct {
	system, shape string
	points        map[int]float64 // clients -> value; only values > 0 (log scale)
}

var chartColours = map[string]string{"1k": "#1f77b4", "10k": "#d62728", "1kx50k": "#2ca02c"}

// chartSVG draws throughput and p99 against clients, sessiond (solid) beside the
// baseline (dashed), one colour per store, for the durable patch workload in closed
// loop: the matrix runs if there are any, else the custom ones. Log scales: the two
// systems are three orders of magnitude apart.
func chartSVG(r *Report) []byte {
	runs := r.pick(Result{Group: groupMatrix, Workload: workloadPatch, Mode: modeClosed})
	if len(runs) == 0 {
		runs = r.pick(Result{Group: groupCustom, Workload: workloadPatch, Mode: modeClosed})
	}
	type key struct {
		system, shape string
		clients       int
	}
	tp, p99 := map[key][]float64{}, map[key][]float64{}
	var clients []int
	var series []chartSeries
	for _, x := range runs {
		k := key{x.System, x.Shape, x.Clients}
		tp[k] = append(tp[k], x.Throughput)
		if x.Latency.Count > 0 {
			p99[k] = append(p99[k], x.Latency.P99ms)
		}
		if !slices.Contains(clients, x.Clients) {
			clients = append(clients, x.Clients)
		}
		if !slices.ContainsFunc(series, func(s chartSeries) bool { return s.system == x.System && s.shape == x.Shape }) {
			series = append(series, chartSeries{system: x.System, shape: x.Shape})
		}
	}
	slices.Sort(clients)
	mk := func(m map[key][]float64) []chartSeries {
		out := make([]chartSeries, len(series))
		for i, s := range series {
			out[i] = chartSeries{system: s.system, shape: s.shape, points: map[int]float64{}}
			for _, c := range clients {
				if v := median(m[key{s.system, s.shape, c}]); v > 0 {
					out[i].points[c] = v
				}
			}
		}
		return out
	}

	const w, h = 980, 470
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", w, h, w, h)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="white"/>`+"\n", w, h)
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" text-anchor="middle">sessiond vs the legacy file-lock protocol: durable patch, closed loop (%s)</text>`+"\n",
		w/2, html.EscapeString(r.Started.Format("2006-01-02")))
	chartPanel(&b, 70, 50, 380, 320, "throughput (successful ops/s, log)", clients, mk(tp))
	chartPanel(&b, 570, 50, 380, 320, "p99 latency (ms, log)", clients, mk(p99))
	// Legend.
	x := 70
	for _, s := range series {
		dash := ""
		if s.system == systemBaseline {
			dash = ` stroke-dasharray="6 4"`
		}
		fmt.Fprintf(&b, `<line x1="%d" y1="440" x2="%d" y2="440" stroke="%s" stroke-width="2"%s/>`+"\n", x, x+30, chartColour(s.shape), dash)
		fmt.Fprintf(&b, `<text x="%d" y="444">%s %s</text>`+"\n", x+36, s.system, s.shape)
		x += 145
	}
	b.WriteString("</svg>\n")
	return []byte(b.String())
}

func chartColour(shape string) string {
	if c, ok := chartColours[shape]; ok {
		return c
	}
	return "#555555"
}

// chartPanel draws one log-scale panel with its top-left corner at (x0, y0).
func chartPanel(b *strings.Builder, x0, y0, pw, ph int, title string, clients []int, series []chartSeries) {
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, s := range series {
		for _, v := range s.points {
			lo, hi = math.Min(lo, v), math.Max(hi, v)
		}
	}
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle" font-size="13">%s</text>`+"\n", x0+pw/2, y0-8, html.EscapeString(title))
	fmt.Fprintf(b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", x0, y0, pw, ph)
	if len(clients) == 0 || math.IsInf(lo, 0) {
		fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">no data</text>`+"\n", x0+pw/2, y0+ph/2)
		return
	}
	dLo, dHi := math.Floor(math.Log10(lo)), math.Ceil(math.Log10(hi))
	if dHi == dLo {
		dHi++
	}
	yOf := func(v float64) float64 {
		return float64(y0+ph) - (math.Log10(v)-dLo)/(dHi-dLo)*float64(ph)
	}
	xOf := func(c int) float64 {
		i := slices.Index(clients, c)
		return float64(x0) + (float64(i)+0.5)/float64(len(clients))*float64(pw)
	}
	for d := dLo; d <= dHi; d++ {
		y := yOf(math.Pow(10, d))
		fmt.Fprintf(b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>`+"\n", x0, y, x0+pw, y)
		fmt.Fprintf(b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", x0-6, y+4, chartTick(math.Pow(10, d)))
	}
	for _, c := range clients {
		fmt.Fprintf(b, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", xOf(c), y0+ph+16, c)
	}
	fmt.Fprintf(b, `<text x="%d" y="%d" text-anchor="middle">clients</text>`+"\n", x0+pw/2, y0+ph+34)
	for _, s := range series {
		var pts []string
		for _, c := range clients {
			if v, ok := s.points[c]; ok {
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", xOf(c), yOf(v)))
			}
		}
		dash := ""
		if s.system == systemBaseline {
			dash = ` stroke-dasharray="6 4"`
		}
		col := chartColour(s.shape)
		if len(pts) > 1 {
			fmt.Fprintf(b, `<polyline points="%s" fill="none" stroke="%s" stroke-width="2"%s/>`+"\n", strings.Join(pts, " "), col, dash)
		}
		for _, pt := range pts {
			xy := strings.Split(pt, ",")
			fmt.Fprintf(b, `<circle cx="%s" cy="%s" r="3" fill="%s"/>`+"\n", xy[0], xy[1], col)
		}
	}
}

// chartTick labels a power of ten: 0.01, 1, 100, 10k, 1M.
func chartTick(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%gM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%gk", v/1e3)
	}
	return fmt.Sprintf("%g", v)
}
