// muxload: load for memmq.v1 (README, "One connection, many
// subscriptions"), which mqbench does not speak. Loopback only, every run
// bounded. One JSON line per run on stdout.
//
//	muxload -url https://127.0.0.1:PORT fanout -mode mux|plain -s 100 -m 20000 -b 64
//	    S subscribers to one topic, each its own connection: memmq.v1
//	    connections (mux) or plain /sub?topic= WebSockets (plain); one
//	    keep-alive HTTP publisher sends M numbered messages one at a time;
//	    deliveries/s, lost, out of order, duplicates.
//	muxload -url ... -pid PID subs -k 5000
//	    one memmq.v1 connection with K topic subscriptions: the server's
//	    RSS before and after, and per subscription.
//	muxload -url ... hold -k 10000 -d 30s
//	    one memmq.v1 connection with K pattern subscriptions that match no
//	    published topic (nomatch.N.*), held for D (run mqbench pub meanwhile).
package main

import (
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

var base *url.URL

var dialer = &websocket.Dialer{
	TLSClientConfig:  &tls.Config{InsecureSkipVerify: true},
	HandshakeTimeout: 10 * time.Second,
	ReadBufferSize:   65536,
}

func wsURL(query string) string {
	scheme := "wss"
	if base.Scheme == "http" {
		scheme = "ws"
	}
	return scheme + "://" + base.Host + "/sub" + query
}

func dialMux() (*websocket.Conn, error) {
	d := *dialer
	d.Subprotocols = []string{"memmq.v1"}
	c, _, err := d.Dial(wsURL(""), nil)
	if err != nil {
		return nil, err
	}
	if c.Subprotocol() != "memmq.v1" {
		c.Close()
		return nil, fmt.Errorf("the server does not speak memmq.v1")
	}
	return c, nil
}

// subscribe sends `requests` sub requests and waits for every reply.
func subscribe(c *websocket.Conn, requests []map[string]any) error {
	for i, r := range requests {
		r["op"], r["id"] = "sub", i
		b, _ := json.Marshal(r)
		if err := c.WriteMessage(websocket.TextMessage, b); err != nil {
			return err
		}
	}
	for got := 0; got < len(requests); {
		kind, data, err := c.ReadMessage()
		if err != nil {
			return err
		}
		if kind != websocket.TextMessage {
			continue
		}
		var reply map[string]any
		json.Unmarshal(data, &reply)
		if reply["op"] != "ok" {
			return fmt.Errorf("refused: %s", data)
		}
		got++
	}
	return nil
}

func rss(pid int) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(data), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return -1
}

func emit(v any) {
	b, _ := json.Marshal(v)
	fmt.Println(string(b))
}

type sub struct {
	c        *websocket.Conn
	mux      bool
	expect   uint64
	got      int64
	ooo      int64
	dup      int64
	maxSeq   int64
	lastRecv int64
	seen     []bool
	ready    int32
}

func (s *sub) read(total *int64, wg *sync.WaitGroup) {
	defer wg.Done()
	for {
		kind, data, err := s.c.ReadMessage()
		if err != nil {
			return
		}
		if kind != websocket.BinaryMessage {
			continue
		}
		if s.mux {
			n := int(binary.BigEndian.Uint16(data))
			data = data[2+n:]
		}
		if len(data) < 8 {
			continue
		}
		seq := binary.BigEndian.Uint64(data)
		if seq == 1<<63 {
			atomic.StoreInt32(&s.ready, 1)
			continue
		}
		if seq >= s.expect {
			continue
		}
		if s.seen[seq] {
			s.dup++
			continue
		}
		s.seen[seq] = true
		if int64(seq) < s.maxSeq {
			s.ooo++
		} else {
			s.maxSeq = int64(seq)
		}
		s.got++
		s.lastRecv = time.Now().UnixNano()
		atomic.AddInt64(total, 1)
	}
}

func fanout(args []string) error {
	fs := flag.NewFlagSet("fanout", flag.ExitOnError)
	mode := fs.String("mode", "mux", "mux (memmq.v1 connections) or plain (/sub?topic= WebSockets)")
	n := fs.Int("s", 100, "subscribers (connections), at most 2000")
	m := fs.Int("m", 20000, "messages, at most 200000")
	size := fs.Int("b", 64, "payload bytes (at least 8)")
	fs.Parse(args)
	if *n < 1 || *n > 2000 || *m < 1 || *m > 200000 || *size < 8 || *size > 1<<20 {
		return fmt.Errorf("out of bounds: -s 1..2000, -m 1..200000, -b 8..1MiB")
	}
	topic := fmt.Sprintf("muxload-%d", time.Now().UnixNano())
	subs := make([]*sub, *n)
	for i := range subs {
		var c *websocket.Conn
		var err error
		if *mode == "mux" {
			if c, err = dialMux(); err == nil {
				err = subscribe(c, []map[string]any{{"topic": topic}})
			}
		} else {
			c, _, err = dialer.Dial(wsURL("?topic="+url.QueryEscape(topic)), nil)
		}
		if err != nil {
			return err
		}
		subs[i] = &sub{c: c, mux: *mode == "mux", expect: uint64(*m), maxSeq: -1, seen: make([]bool, *m)}
	}
	var total int64
	var wg sync.WaitGroup
	for _, s := range subs {
		wg.Add(1)
		go s.read(&total, &wg)
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, MaxIdleConnsPerHost: 1,
		DialContext: (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
	}, Timeout: 30 * time.Second}
	pubURL := base.String() + "/pub?topic=" + url.QueryEscape(topic)
	payload := make([]byte, *size)
	post := func() error {
		resp, err := client.Post(pubURL, "application/octet-stream", bytes.NewReader(payload))
		if err != nil {
			return err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("publish: HTTP %d", resp.StatusCode)
		}
		return nil
	}
	// Probe until every subscriber is registered.
	binary.BigEndian.PutUint64(payload, 1<<63)
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
		post()
		ready := 0
		for _, s := range subs {
			ready += int(atomic.LoadInt32(&s.ready))
		}
		if ready == len(subs) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	start := time.Now()
	for seq := 0; seq < *m; seq++ {
		binary.BigEndian.PutUint64(payload, uint64(seq))
		if err := post(); err != nil {
			return err
		}
	}
	published := time.Since(start)
	want := int64(*n) * int64(*m)
	last, lastChange := int64(-1), time.Now()
	for end := time.Now().Add(60 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		got := atomic.LoadInt64(&total)
		if got >= want || time.Since(lastChange) > 3*time.Second {
			break
		}
		if got != last {
			last, lastChange = got, time.Now()
		}
	}
	for _, s := range subs {
		s.c.Close()
	}
	wg.Wait()
	var got, ooo, dup, lastRecv int64
	for _, s := range subs {
		got += s.got
		ooo += s.ooo
		dup += s.dup
		if s.lastRecv > lastRecv {
			lastRecv = s.lastRecv
		}
	}
	emit(map[string]any{
		"scenario": "fanout", "mode": *mode, "subscribers": *n, "messages": *m, "bytes": *size,
		"published_per_s": float64(*m) / published.Seconds(),
		"expected":        want, "received": got, "lost": want - got, "out_of_order": ooo, "duplicates": dup,
		"deliveries_per_s": float64(got) / (float64(lastRecv-start.UnixNano()) / 1e9),
	})
	return nil
}

func subs(args []string, pid int) error {
	fs := flag.NewFlagSet("subs", flag.ExitOnError)
	k := fs.Int("k", 5000, "topic subscriptions on one connection, at most 100000")
	settle := fs.Duration("settle", 2*time.Second, "wait before each RSS sample")
	fs.Parse(args)
	if *k < 1 || *k > 100000 || pid <= 0 {
		return fmt.Errorf("-k 1..100000 and -pid are needed")
	}
	c, err := dialMux()
	if err != nil {
		return err
	}
	defer c.Close()
	time.Sleep(*settle)
	before := rss(pid)
	requests := make([]map[string]any, *k)
	for i := range requests {
		requests[i] = map[string]any{"topic": fmt.Sprintf("memtest.topic.%d", i)}
	}
	if err := subscribe(c, requests); err != nil {
		return err
	}
	time.Sleep(*settle)
	after := rss(pid)
	emit(map[string]any{
		"scenario": "subs", "subscriptions": *k, "rss_before": before, "rss_after": after,
		"bytes_per_subscription": float64(after-before) / float64(*k),
	})
	return nil
}

func hold(args []string) error {
	fs := flag.NewFlagSet("hold", flag.ExitOnError)
	k := fs.Int("k", 10000, "pattern subscriptions, at most 100000")
	d := fs.Duration("d", 30*time.Second, "how long to hold them, at most 10m")
	fs.Parse(args)
	if *k < 1 || *k > 100000 || *d > 10*time.Minute {
		return fmt.Errorf("-k 1..100000, -d at most 10m")
	}
	c, err := dialMux()
	if err != nil {
		return err
	}
	defer c.Close()
	requests := make([]map[string]any, *k)
	for i := range requests {
		requests[i] = map[string]any{"pattern": fmt.Sprintf("nomatch.%d.*", i)}
	}
	if err := subscribe(c, requests); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "holding %d pattern subscriptions\n", *k)
	emit(map[string]any{"scenario": "hold", "patterns": *k})
	time.Sleep(*d)
	return nil
}

func main() {
	raw := flag.String("url", "https://127.0.0.1:8081", "server base URL (loopback only)")
	pid := flag.Int("pid", 0, "server process id (for subs)")
	timeout := flag.Duration("timeout", 5*time.Minute, "hard limit for the run")
	flag.Parse()
	var err error
	if base, err = url.Parse(*raw); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	host := base.Hostname()
	if ip := net.ParseIP(host); !(host == "localhost" || (ip != nil && ip.IsLoopback())) {
		fmt.Fprintln(os.Stderr, "muxload: loopback servers only")
		os.Exit(2)
	}
	time.AfterFunc(*timeout, func() {
		emit(map[string]string{"error": "timed out"})
		os.Exit(3)
	})
	args := flag.Args()
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: muxload [-url URL] [-pid PID] fanout|subs|hold [flags]")
		os.Exit(2)
	}
	switch args[0] {
	case "fanout":
		err = fanout(args[1:])
	case "subs":
		err = subs(args[1:], *pid)
	case "hold":
		err = hold(args[1:])
	default:
		err = fmt.Errorf("unknown scenario %q", args[0])
	}
	if err != nil {
		emit(map[string]string{"error": err.Error()})
		os.Exit(1)
	}
}
