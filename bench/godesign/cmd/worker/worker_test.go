package main

import (
	"testing"
	"time"

	"jobworker/bench/godesign/pb"
)

func config10ms() config {
	return config{poolSize: 1, maxJobTimeout: 10 * time.Millisecond, workerID: "test"}
}

func TestNoOpSleepSucceedsWithJobworkersOutput(t *testing.T) {
	task := &pb.JobTask{Id: "a", Type: pb.JobTask_SLEEP, Payload: `{"ms": 0, "output": "x"}`,
		Metadata: map[string]string{"tenant": "t"}}
	result := execute(job{task: task}, config10ms())
	if result.GetStatus() != pb.JobResult_SUCCEEDED || result.GetOutput() != `{"slept_ms":0,"output":"x"}` {
		t.Fatalf("got %v %q", result.GetStatus(), result.GetOutput())
	}
	if result.GetJobId() != "a" || result.GetMetadata()["tenant"] != "t" || result.GetAttempts() != 1 {
		t.Fatalf("result does not echo the task: %v", result)
	}
}

func TestSleepPastTheTimeoutTimesOut(t *testing.T) {
	task := &pb.JobTask{Id: "a", Type: pb.JobTask_SLEEP, Payload: `{"ms": 1000}`}
	started := time.Now()
	result := execute(job{task: task}, config10ms())
	if result.GetStatus() != pb.JobResult_TIMED_OUT || time.Since(started) > 500*time.Millisecond {
		t.Fatalf("got %v after %v", result.GetStatus(), time.Since(started))
	}
}

func TestTaskTimeoutIsCappedByMaxJobTimeout(t *testing.T) {
	task := &pb.JobTask{Id: "a", Type: pb.JobTask_SLEEP, Payload: `{"ms": 50}`, TimeoutMs: 5}
	cfg := config10ms()
	cfg.maxJobTimeout = time.Second
	if result := execute(job{task: task}, cfg); result.GetStatus() != pb.JobResult_TIMED_OUT {
		t.Fatalf("the task's own 5 ms timeout was not applied: %v", result.GetStatus())
	}
}

func TestFailAndBadPayloadFail(t *testing.T) {
	for _, payload := range []string{`{"ms": 0, "fail": true}`, `{}`, `{"ms": -1}`, `not json`} {
		task := &pb.JobTask{Id: "a", Type: pb.JobTask_SLEEP, Payload: payload}
		if result := execute(job{task: task}, config10ms()); result.GetStatus() != pb.JobResult_FAILED {
			t.Errorf("%s: got %v", payload, result.GetStatus())
		}
	}
}

func TestConfigDefaultsAreTheSeeds(t *testing.T) {
	t.Setenv("KAFKA_BROKERS", "127.0.0.1:9092")
	t.Setenv("KAFKA_GROUP_ID", "g")
	t.Setenv("GRPC_SERVER_ADDRESS", "127.0.0.1:1")
	for _, name := range []string{"KAFKA_TOPIC", "WORKER_POOL_SIZE", "MAX_JOB_TIMEOUT", "LOG_FORMAT", "LOG_LEVEL"} {
		t.Setenv(name, "")
	}
	cfg, err := loadConfig(0)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.topic != "job_requests" || cfg.poolSize != 10 || cfg.maxJobTimeout != 30*time.Second || cfg.logFormat != "json" {
		t.Fatalf("defaults: %+v", cfg)
	}
	if cfg, _ = loadConfig(1000); cfg.poolSize != 1000 {
		t.Fatalf("-pool did not override: %d", cfg.poolSize)
	}
}

func TestMissingRequiredSettingsAreNamed(t *testing.T) {
	for _, name := range []string{"KAFKA_BROKERS", "KAFKA_GROUP_ID", "GRPC_SERVER_ADDRESS"} {
		t.Setenv(name, "")
	}
	_, err := loadConfig(0)
	if err == nil || err.Error() != "KAFKA_BROKERS is required; KAFKA_GROUP_ID is required; GRPC_SERVER_ADDRESS is required" {
		t.Fatalf("got %v", err)
	}
}
