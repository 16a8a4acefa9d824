// loadgen: the Kubernetes side of dev/bench. Standard library only; talks REST to the
// API server of dev/testenv with its admin client certificate.
//
//	loadgen create -ns NS -n N [-size 1024] [-c 32]      create NS (if missing) and N ConfigMaps
//	loadgen list   -ns NS [-limit 500]                    one paginated LIST, timed (the floor)
//	loadgen churn  -ns NS -n N -rate R -duration S -out F  merge-patch objects at a fixed rate;
//	                                                      F gets "name rv ack_unix_ns" per write
//	loadgen update -ns NS -name NAME                      one write; prints "rv ack_unix_ns"
//	loadgen delete -ns NS [-c 32]                         delete every bench ConfigMap in NS
//	loadgen watch  -ns NS -out F                          the latency floor: a bare watch from now;
//	                                                      F gets "name rv receipt_unix_ns" per event
//
// Objects are named bench-<i> (zero-padded) and labelled app.kubernetes.io/managed-by=kubewire-bench.
package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const label = "app.kubernetes.io/managed-by=kubewire-bench"

type client struct {
	base string
	http *http.Client
}

func newClient() *client {
	dir := os.Getenv("TESTENV_DIR")
	if dir == "" {
		dir = ".testenv"
	}
	server := os.Getenv("TESTENV_APISERVER_URL")
	if server == "" {
		server = "https://127.0.0.1:16443"
	}
	cert, err := tls.LoadX509KeyPair(dir+"/certs/admin.crt", dir+"/certs/admin.key")
	must(err)
	caPEM, err := os.ReadFile(dir + "/certs/ca.crt")
	must(err)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 256,
	}
	return &client{base: server, http: &http.Client{Transport: tr, Timeout: 120 * time.Second}}
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func (c *client) do(method, path, ctype string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Accept", "application/json")
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

func name(i int) string { return fmt.Sprintf("bench-%06d", i) }

// payload: about `size` bytes of data in 8 keys, so the stored object is ~size + metadata.
func payload(size, seed int) map[string]string {
	keys := 8
	per := size / keys
	if per < 1 {
		per = 1
	}
	out := make(map[string]string, keys)
	for k := 0; k < keys; k++ {
		v := []byte(strings.Repeat("x", per))
		s := fmt.Sprintf("%d-%d-", seed, k)
		copy(v, s)
		out[fmt.Sprintf("key-%d", k)] = string(v)
	}
	return out
}

func ensureNamespace(c *client, ns string) {
	body, _ := json.Marshal(map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}})
	code, b, err := c.do("POST", "/api/v1/namespaces", "application/json", body)
	must(err)
	if code != 201 && code != 409 {
		must(fmt.Errorf("create namespace %s: HTTP %d: %s", ns, code, b))
	}
}

// parallel runs f(i) for i in [0,n) on c workers; returns the number of errors.
func parallel(n, c int, f func(i int) error) int64 {
	var next, errs int64 = -1, 0
	var wg sync.WaitGroup
	var once sync.Once
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(atomic.AddInt64(&next, 1))
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					if atomic.AddInt64(&errs, 1) <= 3 {
						fmt.Fprintln(os.Stderr, "loadgen:", err)
					}
					once.Do(func() {})
				}
			}
		}()
	}
	wg.Wait()
	return errs
}

func cmdCreate(c *client, ns string, n, size, conc, start int) {
	ensureNamespace(c, ns)
	t0 := time.Now()
	var done int64
	errs := parallel(n, conc, func(j int) error {
		i := start + j
		obj := map[string]any{
			"apiVersion": "v1", "kind": "ConfigMap",
			"metadata": map[string]any{"name": name(i), "namespace": ns,
				"labels": map[string]string{"app.kubernetes.io/managed-by": "kubewire-bench"}},
			"data": payload(size, i),
		}
		body, _ := json.Marshal(obj)
		for attempt := 0; ; attempt++ {
			code, b, err := c.do("POST", "/api/v1/namespaces/"+ns+"/configmaps", "application/json", body)
			if err == nil && (code == 201 || code == 409) {
				if d := atomic.AddInt64(&done, 1); d%10000 == 0 {
					fmt.Fprintf(os.Stderr, "created %d/%d (%.0f/s)\n", d, n, float64(d)/time.Since(t0).Seconds())
				}
				return nil
			}
			if attempt >= 5 {
				if err != nil {
					return err
				}
				return fmt.Errorf("create %s: HTTP %d: %.200s", name(i), code, b)
			}
			time.Sleep(time.Duration(100*(attempt+1)) * time.Millisecond)
		}
	})
	el := time.Since(t0).Seconds()
	fmt.Printf("{\"created\":%d,\"errors\":%d,\"seconds\":%.3f,\"per_second\":%.1f}\n", n-int(errs), errs, el, float64(n)/el)
	if errs > 0 {
		os.Exit(1)
	}
}

type listPage struct {
	Metadata struct {
		Continue        string `json:"continue"`
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
	Items []json.RawMessage `json:"items"`
}

func cmdList(c *client, ns string, limit int, selector string) {
	t0 := time.Now()
	items, pages, bytesRead, restarts := 0, 0, 0, 0
	cont := ""
	rv := ""
	for {
		q := url.Values{}
		q.Set("limit", fmt.Sprint(limit))
		if selector != "" {
			q.Set("labelSelector", selector)
		}
		if cont != "" {
			q.Set("continue", cont)
		}
		path := "/api/v1/configmaps"
		if ns != "" {
			path = "/api/v1/namespaces/" + ns + "/configmaps"
		}
		code, b, err := c.do("GET", path+"?"+q.Encode(), "", nil)
		must(err)
		if code == 410 && cont != "" {
			// The continue token's revision was compacted (dev/testenv compact, by someone's
			// test): the list starts over, and the output says so.
			restarts++
			t0, items, pages, bytesRead, cont, rv = time.Now(), 0, 0, 0, "", ""
			continue
		}
		if code != 200 {
			must(fmt.Errorf("list: HTTP %d: %.300s", code, b))
		}
		var p listPage
		must(json.Unmarshal(b, &p))
		items += len(p.Items)
		pages++
		bytesRead += len(b)
		if rv == "" {
			rv = p.Metadata.ResourceVersion
		}
		cont = p.Metadata.Continue
		if cont == "" {
			break
		}
	}
	el := time.Since(t0).Seconds()
	fmt.Printf("{\"items\":%d,\"pages\":%d,\"bytes\":%d,\"seconds\":%.3f,\"resource_version\":%q,\"restarts\":%d}\n", items, pages, bytesRead, el, rv, restarts)
}

type meta struct {
	Metadata struct {
		ResourceVersion string `json:"resourceVersion"`
	} `json:"metadata"`
}

func patchOne(c *client, ns, nm string, seq int64) (string, int64, error) {
	body := fmt.Sprintf(`{"data":{"seq":"%d"}}`, seq)
	code, b, err := c.do("PATCH", "/api/v1/namespaces/"+ns+"/configmaps/"+nm, "application/merge-patch+json", []byte(body))
	ack := time.Now().UnixNano()
	if err != nil {
		return "", 0, err
	}
	if code != 200 {
		return "", 0, fmt.Errorf("patch %s: HTTP %d: %.200s", nm, code, b)
	}
	var m meta
	if err := json.Unmarshal(b, &m); err != nil {
		return "", 0, err
	}
	return m.Metadata.ResourceVersion, ack, nil
}

// cmdChurn: open loop at `rate` writes/s for `dur`; a write is scheduled every 1/rate and
// given to a free worker; a tick with no free worker is counted as missed (the API server
// did not keep up), never queued (that would hide latency in our own queue).
func cmdChurn(c *client, ns string, n int, rate float64, dur time.Duration, conc int, out string) {
	f, err := os.Create(out)
	must(err)
	w := bufio.NewWriter(f)
	var mu sync.Mutex
	jobs := make(chan int64)
	var wg sync.WaitGroup
	var okN, errN int64
	for k := 0; k < conc; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := range jobs {
				nm := name(int(seq % int64(n)))
				rv, ack, err := patchOne(c, ns, nm, seq)
				if err != nil {
					if atomic.AddInt64(&errN, 1) <= 3 {
						fmt.Fprintln(os.Stderr, "loadgen:", err)
					}
					continue
				}
				atomic.AddInt64(&okN, 1)
				mu.Lock()
				fmt.Fprintf(w, "%s %s %d\n", nm, rv, ack)
				mu.Unlock()
			}
		}()
	}
	time.Sleep(100 * time.Millisecond) // let the workers start
	interval := time.Duration(float64(time.Second) / rate)
	t0 := time.Now()
	var seq, missed int64
	for {
		due := t0.Add(time.Duration(seq) * interval)
		if due.Sub(t0) >= dur {
			break
		}
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		select {
		case jobs <- seq:
		default:
			missed++
		}
		seq++
	}
	close(jobs)
	wg.Wait()
	el := time.Since(t0).Seconds()
	mu.Lock()
	must(w.Flush())
	mu.Unlock()
	must(f.Close())
	fmt.Printf("{\"target_rate\":%.1f,\"scheduled\":%d,\"written\":%d,\"errors\":%d,\"missed\":%d,\"seconds\":%.3f,\"achieved_rate\":%.1f}\n",
		rate, seq, okN, errN, missed, el, float64(okN)/el)
}

func cmdDelete(c *client, ns string, conc int) {
	t0 := time.Now()
	var names []string
	cont := ""
	for {
		q := url.Values{}
		q.Set("limit", "5000")
		q.Set("labelSelector", label)
		if cont != "" {
			q.Set("continue", cont)
		}
		code, b, err := c.do("GET", "/api/v1/namespaces/"+ns+"/configmaps?"+q.Encode(), "", nil)
		must(err)
		if code == 404 {
			break
		}
		if code != 200 {
			must(fmt.Errorf("list: HTTP %d: %.300s", code, b))
		}
		var p struct {
			Metadata struct{ Continue string } `json:"metadata"`
			Items    []struct {
				Metadata struct{ Name string } `json:"metadata"`
			} `json:"items"`
		}
		must(json.Unmarshal(b, &p))
		for _, it := range p.Items {
			names = append(names, it.Metadata.Name)
		}
		cont = p.Metadata.Continue
		if cont == "" {
			break
		}
	}
	errs := parallel(len(names), conc, func(i int) error {
		code, b, err := c.do("DELETE", "/api/v1/namespaces/"+ns+"/configmaps/"+names[i], "", nil)
		if err != nil {
			return err
		}
		if code != 200 && code != 202 && code != 404 {
			return fmt.Errorf("delete %s: HTTP %d: %.200s", names[i], code, b)
		}
		return nil
	})
	fmt.Printf("{\"deleted\":%d,\"errors\":%d,\"seconds\":%.3f}\n", len(names)-int(errs), errs, time.Since(t0).Seconds())
}

// cmdWatch: a bare watch (no decode beyond name and resourceVersion, no sink) from the
// current resourceVersion, until SIGTERM; the floor of write-ack → receipt latency here.
func cmdWatch(c *client, ns, out string) {
	f, err := os.Create(out)
	must(err)
	w := bufio.NewWriter(f)
	code, b, err := c.do("GET", "/api/v1/namespaces/"+ns+"/configmaps?limit=1", "", nil)
	must(err)
	if code != 200 {
		must(fmt.Errorf("list: HTTP %d: %.300s", code, b))
	}
	var p listPage
	must(json.Unmarshal(b, &p))
	req, err := http.NewRequest("GET", c.base+"/api/v1/namespaces/"+ns+"/configmaps?watch=1&resourceVersion="+p.Metadata.ResourceVersion, nil)
	must(err)
	// No client timeout on the stream.
	resp, err := (&http.Client{Transport: c.http.Transport}).Do(req)
	must(err)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		resp.Body.Close()
	}()
	var mu sync.Mutex
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		for {
			select {
			case <-t.C:
				mu.Lock()
				w.Flush()
				mu.Unlock()
			case <-stop:
				return
			}
		}
	}()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev struct {
			Object struct {
				Metadata struct {
					Name            string `json:"name"`
					ResourceVersion string `json:"resourceVersion"`
				} `json:"metadata"`
			} `json:"object"`
		}
		if err := dec.Decode(&ev); err != nil {
			break
		}
		now := time.Now().UnixNano()
		mu.Lock()
		fmt.Fprintf(w, "%s %s %d\n", ev.Object.Metadata.Name, ev.Object.Metadata.ResourceVersion, now)
		mu.Unlock()
	}
	close(stop)
	mu.Lock()
	must(w.Flush())
	mu.Unlock()
	must(f.Close())
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen create|list|churn|update|delete [flags]")
		os.Exit(2)
	}
	fs := flag.NewFlagSet(os.Args[1], flag.ExitOnError)
	ns := fs.String("ns", "kubewire-bench", "namespace")
	n := fs.Int("n", 1000, "number of objects")
	start := fs.Int("start", 0, "first object index (create)")
	size := fs.Int("size", 1024, "bytes of data per ConfigMap")
	conc := fs.Int("c", 32, "concurrent requests")
	limit := fs.Int("limit", 500, "page size (list)")
	selector := fs.String("selector", "", "label selector (list)")
	rate := fs.Float64("rate", 100, "writes per second (churn)")
	dur := fs.Duration("duration", 60*time.Second, "duration (churn)")
	out := fs.String("out", "churn.txt", "write log (churn)")
	nm := fs.String("name", name(0), "object (update)")
	must(fs.Parse(os.Args[2:]))
	c := newClient()
	switch os.Args[1] {
	case "create":
		cmdCreate(c, *ns, *n, *size, *conc, *start)
	case "list":
		cmdList(c, *ns, *limit, *selector)
	case "churn":
		cmdChurn(c, *ns, *n, *rate, *dur, *conc, *out)
	case "update":
		rv, ack, err := patchOne(c, *ns, *nm, time.Now().UnixNano())
		must(err)
		fmt.Printf("%s %d\n", rv, ack)
	case "delete":
		cmdDelete(c, *ns, *conc)
	case "watch":
		cmdWatch(c, *ns, *out)
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}
