package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"jobworker/bench/godesign/pb"
)

// Executor is the seed's plugin interface: a payload in, an output or an error out.
type Executor func(ctx context.Context, payload string) (string, error)

// registry maps a job type to its executor (the seed's Strategy); filled by init().
var registry = map[pb.JobTask_Type]Executor{}

func register(jobType pb.JobTask_Type, executor Executor) {
	registry[jobType] = executor
}

func init() {
	register(pb.JobTask_SLEEP, sleep)
}

// sleepPayload is jobworker's SLEEP payload: {"ms": 250, "fail": false, "output": "…"}.
type sleepPayload struct {
	Ms     *int64 `json:"ms"`
	Fail   bool   `json:"fail"`
	Output string `json:"output"`
}

type sleepOutput struct {
	SleptMs int64  `json:"slept_ms"`
	Output  string `json:"output"`
}

// sleep is the Sleep/Mock executor: {"ms": 0} is the benchmarks' no-op job.
func sleep(ctx context.Context, payload string) (string, error) {
	var p sleepPayload
	if err := json.Unmarshal([]byte(payload), &p); err != nil {
		return "", fmt.Errorf("SLEEP payload: %w", err)
	}
	if p.Ms == nil || *p.Ms < 0 {
		return "", errors.New(`SLEEP payload: "ms" must be an integer >= 0`)
	}
	if *p.Ms > 0 {
		timer := time.NewTimer(time.Duration(*p.Ms) * time.Millisecond)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return "", ctx.Err()
		}
	}
	if p.Fail {
		return "", errors.New("SLEEP job asked to fail (fail=true)")
	}
	output, err := json.Marshal(sleepOutput{SleptMs: *p.Ms, Output: p.Output})
	return string(output), err
}
