// ssefanout: mqbench's fan-out scenario over Server-Sent Events.
//
// S clients subscribe to one fresh topic with GET /sub?topic=T and
// "Accept: text/event-stream" (what a browser's EventSource sends); once all
// have their stream's first bytes, one publisher POSTs M numbered,
// timestamped messages, one keep-alive request at a time, as
// "mqbench fanout -pub http" does. Prints one JSON line with mqbench's
// fields: deliveries_per_s = received / (last arrival - first send), lost,
// out_of_order, duplicates, latency.
//
// With -pid, server_cpu_s is the server's CPU time (from /proc/PID/stat)
// from the first publish to the end of the drain: the deliveries' cost,
// without the streams' TLS handshakes. It takes mqbench's common flags
// (-q, -pid) and an optional scenario name "fanout" before the scenario's
// flags, so that bench/ab.py (and bench/sse_ab.py) can run it in
// mqbench's place.
//
// Loopback only, bounded by -timeout. Standard library only:
//
//	cd bench/ssefanout && GO111MODULE=off go build -o ssefanout .
//	./ssefanout -url https://127.0.0.1:8081 -s 100 -m 2000 -b 64
//	./ssefanout -q -url https://127.0.0.1:8081 -pid PID fanout -s 1000 -m 2000 -b 64
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

type result struct {
	Scenario       string             `json:"scenario"`
	Subscribers    int                `json:"subscribers"`
	Messages       int                `json:"messages"`
	Bytes          int                `json:"bytes"`
	PublishedPerS  float64            `json:"published_per_s"`
	Expected       int64              `json:"expected"`
	Received       int64              `json:"received"`
	Lost           int64              `json:"lost"`
	SubsWithLoss   int                `json:"subs_with_loss"`
	OutOfOrder     int64              `json:"out_of_order"`
	Duplicates     int64              `json:"duplicates"`
	DeliveriesPerS float64            `json:"deliveries_per_s"`
	Latency        map[string]float64 `json:"latency"`
	ConnectS       float64            `json:"connect_s"`
	ServerCPUS     *float64           `json:"server_cpu_s,omitempty"`
	Error          string             `json:"error,omitempty"`
}

type subscriber struct {
	received   int64
	outOfOrder int64
	duplicates int64
	highest    int64
	seen       []bool
	latencies  []float64
	last       time.Time
}

func fail(format string, args ...interface{}) {
	line, _ := json.Marshal(map[string]string{"error": fmt.Sprintf(format, args...)})
	fmt.Println(string(line))
	os.Exit(3)
}

func loopback(base string) {
	u, err := url.Parse(base)
	if err != nil {
		fail("bad -url: %v", err)
	}
	host := u.Hostname()
	if host == "localhost" {
		return
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		fail("-url must be loopback, not %s", host)
	}
}

// serverCPU is the CPU time (user + system, seconds) process pid has used.
func serverCPU(pid int) float64 {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		fail("-pid %d: %v", pid, err)
	}
	str := string(stat)
	// utime and stime: fields 14 and 15, the 12th and 13th after comm's ")".
	f := strings.Fields(str[strings.LastIndexByte(str, ')')+1:])
	if len(f) < 13 {
		fail("-pid %d: unexpected /proc stat", pid)
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100.0 // USER_HZ is 100 on Linux
}

func main() {
	base := flag.String("url", "https://127.0.0.1:8081", "server base URL (loopback only)")
	subs := flag.Int("s", 100, "subscribers (event streams), at most 10000")
	messages := flag.Int("m", 2000, "messages")
	size := flag.Int("b", 64, "payload bytes (at least 24)")
	timeout := flag.Duration("timeout", 2*time.Minute, "hard limit for the whole run")
	drain := flag.Duration("drain", 5*time.Second, "how long to wait for the last deliveries")
	pid := flag.Int("pid", 0, "server process id, to report its CPU time while delivering")
	flag.Bool("q", false, "quiet (accepted for mqbench's sake: nothing but the result is printed)")
	flag.Parse()
	if rest := flag.Args(); len(rest) > 0 {
		if rest[0] != "fanout" {
			fail("the only scenario is fanout, not %q", rest[0])
		}
		flag.CommandLine.Parse(rest[1:])
	}
	loopback(*base)
	if *subs < 1 || *subs > 10000 || *messages < 1 || int64(*subs)*int64(*messages) > 20000000 || *size < 24 {
		fail("out of bounds: -s 1..10000, -m >= 1, s*m <= 20,000,000, -b >= 24")
	}
	time.AfterFunc(*timeout, func() { fail("timed out after %s", *timeout) })

	transport := &http.Transport{
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true},
		MaxIdleConnsPerHost: *subs + 4,
		DisableCompression:  true,
	}
	client := &http.Client{Transport: transport}
	topic := fmt.Sprintf("ssefanout-%d", time.Now().UnixNano())
	start := time.Now()
	state := make([]*subscriber, *subs)
	var ready sync.WaitGroup
	var done sync.WaitGroup
	var total int64
	expected := int64(*subs) * int64(*messages)
	finished := make(chan struct{})
	for i := range state {
		s := &subscriber{highest: -1, seen: make([]bool, *messages)}
		state[i] = s
		ready.Add(1)
		done.Add(1)
		go func(s *subscriber) {
			defer done.Done()
			request, _ := http.NewRequest("GET", *base+"/sub?topic="+url.QueryEscape(topic), nil)
			request.Header.Set("Accept", "text/event-stream")
			response, err := client.Do(request)
			if err != nil {
				fail("subscribe: %v", err)
			}
			defer response.Body.Close()
			if response.StatusCode != 200 || !strings.HasPrefix(response.Header.Get("Content-Type"), "text/event-stream") {
				fail("subscribe: %s %s", response.Status, response.Header.Get("Content-Type"))
			}
			reader := bufio.NewReaderSize(response.Body, 64*1024)
			signalled := false
			for {
				line, err := reader.ReadSlice('\n')
				if !signalled {
					signalled = true
					ready.Done()
				}
				if err != nil {
					if err != io.EOF {
						select {
						case <-finished:
						default:
							fail("stream: %v", err)
						}
					}
					return
				}
				if !bytes.HasPrefix(line, []byte("data: ")) {
					continue
				}
				now := time.Now()
				fields := bytes.SplitN(line[6:], []byte(" "), 3)
				if len(fields) < 2 {
					continue
				}
				seq, err1 := strconv.ParseInt(string(fields[0]), 10, 64)
				sent, err2 := strconv.ParseInt(string(fields[1]), 10, 64)
				if err1 != nil || err2 != nil || seq < 0 || seq >= int64(len(s.seen)) {
					continue
				}
				if s.seen[seq] {
					s.duplicates++
					continue
				}
				s.seen[seq] = true
				if seq < s.highest {
					s.outOfOrder++
				} else {
					s.highest = seq
				}
				s.received++
				s.last = now
				s.latencies = append(s.latencies, float64(now.UnixNano()-sent)/1e6)
				if atomic.AddInt64(&total, 1) == expected {
					close(finished)
				}
			}
		}(s)
	}
	ready.Wait()
	connect := time.Since(start).Seconds()

	publisher := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	pad := strings.Repeat("x", *size)
	var cpuBefore float64
	if *pid != 0 {
		cpuBefore = serverCPU(*pid)
	}
	first := time.Now()
	for seq := 0; seq < *messages; seq++ {
		body := fmt.Sprintf("%d %d ", seq, time.Now().UnixNano())
		if len(body) < *size {
			body += pad[:*size-len(body)]
		}
		response, err := publisher.Post(*base+"/pub?topic="+url.QueryEscape(topic), "application/octet-stream", strings.NewReader(body))
		if err != nil {
			fail("publish: %v", err)
		}
		io.Copy(io.Discard, response.Body)
		response.Body.Close()
		if response.StatusCode != 200 {
			fail("publish: %s", response.Status)
		}
	}
	published := time.Since(first).Seconds()
	select {
	case <-finished:
	case <-time.After(*drain):
	}
	var cpu *float64
	if *pid != 0 {
		used := serverCPU(*pid) - cpuBefore
		cpu = &used
	}
	transport.CloseIdleConnections()

	r := result{Scenario: "sse-fanout", Subscribers: *subs, Messages: *messages, Bytes: *size,
		PublishedPerS: float64(*messages) / published, Expected: expected, ConnectS: connect, ServerCPUS: cpu}
	var last time.Time
	var latencies []float64
	for _, s := range state {
		r.Received += s.received
		r.OutOfOrder += s.outOfOrder
		r.Duplicates += s.duplicates
		if s.received < int64(*messages) {
			r.SubsWithLoss++
		}
		if s.last.After(last) {
			last = s.last
		}
		latencies = append(latencies, s.latencies...)
	}
	r.Lost = expected - r.Received
	if r.Received > 0 {
		r.DeliveriesPerS = float64(r.Received) / last.Sub(first).Seconds()
	}
	sort.Float64s(latencies)
	at := func(q float64) float64 {
		if len(latencies) == 0 {
			return 0
		}
		return latencies[int(q*float64(len(latencies)-1))]
	}
	r.Latency = map[string]float64{"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1)}
	line, _ := json.Marshal(r)
	fmt.Println(string(line))
	os.Exit(0)
}
