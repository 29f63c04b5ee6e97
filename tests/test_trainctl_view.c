/* trainctl's output, checked without a daemon: the text helpers, tables and
 * CSV, job records, the JSON-to-YAML conversion (round-tripped through the
 * parser), and the follow view fed hand-built WatchMetricsResponse messages,
 * on a "terminal" and off one. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../client/view.h"
#include "check.h"
#include "fmt.h"
#include "pbjson.h"
#include "traind/v1/job.pb-c.h"

#define CHECK_STR(got, want) \
  CHECK(strcmp((got), (want)) == 0, "got \"%s\", want \"%s\"", (got), (want))

/* Captures what a function writes to a FILE*. */
typedef struct capture {
  FILE *f;
  char *text;
  size_t len;
} capture;

static void cap_open(capture *c) {
  c->text = NULL;
  c->len = 0;
  c->f = open_memstream(&c->text, &c->len);
}

static char *cap_close(capture *c) {
  fclose(c->f);
  return c->text;
}

static size_t count_of(const char *hay, const char *needle) {
  size_t n = 0;
  for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle))
    n++;
  return n;
}

static void test_text(void) {
  char b[64];
  td_format_duration(0, b, sizeof b);
  CHECK_STR(b, "0:00");
  td_format_duration(42.4, b, sizeof b);
  CHECK_STR(b, "0:42");
  td_format_duration(3723, b, sizeof b);
  CHECK_STR(b, "1:02:03");
  td_format_duration(-1, b, sizeof b);
  CHECK_STR(b, "--:--");
  td_format_duration(NAN, b, sizeof b);
  CHECK_STR(b, "--:--");

  td_view_age(45, b, sizeof b);
  CHECK_STR(b, "45s");
  td_view_age(600, b, sizeof b);
  CHECK_STR(b, "10m");
  td_view_age(7200, b, sizeof b);
  CHECK_STR(b, "2h");
  td_view_age(3 * 86400 + 5, b, sizeof b);
  CHECK_STR(b, "3d");
  td_view_age(-5, b, sizeof b);
  CHECK_STR(b, "-");

  td_view_count(950, b, sizeof b);
  CHECK_STR(b, "950");
  td_view_count(45123, b, sizeof b);
  CHECK_STR(b, "45.1k");
  td_view_count(1.25e6, b, sizeof b);
  CHECK_STR(b, "1.25M");

  td_view_float(0.1f, b, sizeof b);
  CHECK_STR(b, "0.1");
  float third = 1.0f / 3.0f;
  td_view_float(third, b, sizeof b);
  CHECK(strtof(b, NULL) == third, "%s does not read back as 1/3f", b);
  td_view_double(0.1, b, sizeof b);
  CHECK_STR(b, "0.1");

  Google__Protobuf__Timestamp ts = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  ts.seconds = 1714564800; /* 2024-05-01T12:00:00Z */
  td_view_utc_time(&ts, b, sizeof b);
  CHECK_STR(b, "2024-05-01T12:00:00Z");
  ts.nanos = 500000000;
  td_view_utc_time(&ts, b, sizeof b);
  CHECK_STR(b, "2024-05-01T12:00:00.500Z");
  ts.nanos = 1500;
  td_view_utc_time(&ts, b, sizeof b);
  CHECK_STR(b, "2024-05-01T12:00:00.000001500Z");
  td_view_utc_time(NULL, b, sizeof b);
  CHECK_STR(b, "");
  ts.nanos = 0;
  td_view_local_time(&ts, b, sizeof b); /* TZ=UTC, set in main */
  CHECK_STR(b, "2024-05-01 12:00:00");
  td_view_local_time(NULL, b, sizeof b);
  CHECK_STR(b, "-");

  CHECK_STR(td_view_state_name(TRAIND__V1__JOB_STATE__RUNNING, b, sizeof b), "RUNNING");
  CHECK_STR(td_view_state_name(99, b, sizeof b), "UNKNOWN(99)");
  CHECK_STR(td_view_state_name(0, b, sizeof b), "UNKNOWN(0)");
  CHECK(td_view_parse_state("running") == TRAIND__V1__JOB_STATE__RUNNING, "running");
  CHECK(td_view_parse_state("SUCCEEDED") == TRAIND__V1__JOB_STATE__SUCCEEDED, "SUCCEEDED");
  CHECK(td_view_parse_state("Canceled") == TRAIND__V1__JOB_STATE__CANCELLED, "Canceled");
  CHECK(td_view_parse_state("bogus") == -1, "bogus");
  CHECK(td_view_parse_state("JOB_STATE_UNSPECIFIED") == -1, "unspecified is no filter");
  CHECK_STR(td_grpc_code_name(5), "NOT_FOUND");
  CHECK_STR(td_grpc_code_name(14), "UNAVAILABLE");
  CHECK_STR(td_grpc_code_name(99), "UNKNOWN_CODE");

  td_view_sanitize("a\033[31mb\nc", b, sizeof b);
  CHECK_STR(b, "a?[31mb?c");
  td_view_sanitize("x\xc3\xa9", b, 3); /* "xé" cut inside the é */
  CHECK_STR(b, "x");
  CHECK(td_view_width("\u2502\u2588\u2588 ab") == 6, "width of box drawing");
}

static void test_bar_and_sparkline(void) {
  char b[256];
  td_view_bar(0.5, 4, 1, b, sizeof b);
  CHECK_STR(b, "\u2588\u2588  ");
  td_view_bar(9.0 / 16.0, 2, 1, b, sizeof b); /* 9 eighths: one full, one eighth */
  CHECK_STR(b, "\u2588\u258F");
  td_view_bar(0.5, 4, 0, b, sizeof b);
  CHECK_STR(b, "##..");
  td_view_bar(1.5, 3, 1, b, sizeof b);
  CHECK_STR(b, "\u2588\u2588\u2588");
  td_view_bar(NAN, 3, 0, b, sizeof b);
  CHECK_STR(b, "...");

  float ramp[8] = {0, 1, 2, 3, 4, 5, 6, 7};
  td_view_sparkline(ramp, 8, 1, b, sizeof b);
  CHECK_STR(b, "\u2581\u2582\u2583\u2584\u2585\u2586\u2587\u2588");
  td_view_sparkline(ramp, 8, 0, b, sizeof b);
  CHECK_STR(b, "_.-:=+*#");
  float flat[3] = {2, 2, 2};
  td_view_sparkline(flat, 3, 1, b, sizeof b);
  CHECK_STR(b, "\u2584\u2584\u2584");
  float bad[3] = {1, NAN, 0};
  td_view_sparkline(bad, 3, 0, b, sizeof b);
  CHECK_STR(b, "#!_");
}

static void test_table(void) {
  static const char *const header[] = {"NAME", "N", "NOTE"};
  td_table t;
  CHECK(td_table_init(&t, 3, header, "lrl") == 0, "init");
  const char *r1[] = {"a", "1", "x,y"};
  const char *r2[] = {"long\033name", "100", "say \"hi\""};
  td_table_add(&t, r1);
  td_table_add_span(&t, "-- between");
  td_table_add(&t, r2);
  capture c;
  cap_open(&c);
  td_table_print(&t, c.f);
  char *s = cap_close(&c);
  CHECK_STR(s, "NAME         N  NOTE\n"
               "a            1  x,y\n"
               "-- between\n"
               "long?name  100  say \"hi\"\n");
  free(s);
  cap_open(&c);
  td_table_print_csv(&t, c.f);
  s = cap_close(&c);
  CHECK_STR(s, "NAME,N,NOTE\n"
               "a,1,\"x,y\"\n"
               "long?name,100,\"say \"\"hi\"\"\"\n");
  free(s);
  td_table_free(&t);
}

static Traind__V1__Job *make_job(const char *id, int state, int64_t step) {
  Traind__V1__Job *j = calloc(1, sizeof *j);
  traind__v1__job__init(j);
  j->id = strdup(id);
  j->name = strdup("mnist-mlp");
  j->state = state;
  j->progress = calloc(1, sizeof *j->progress);
  traind__v1__progress__init(j->progress);
  j->progress->step = step;
  j->progress->epoch = (uint32_t)(step / 468);
  j->progress->total_steps = 4680;
  j->progress->total_epochs = 10;
  j->progress->steps_per_epoch = 468;
  j->metrics = calloc(1, sizeof *j->metrics);
  traind__v1__latest_metrics__init(j->metrics);
  j->created = calloc(1, sizeof *j->created);
  google__protobuf__timestamp__init(j->created);
  j->created->seconds = 1714564800;
  return j;
}

static void test_jobs_table(void) {
  Traind__V1__Job *jobs[2] = {make_job("j-1", TRAIND__V1__JOB_STATE__RUNNING, 936),
                              make_job("j-22", TRAIND__V1__JOB_STATE__QUEUED, 0)};
  jobs[0]->metrics->loss = 0.12345f;
  jobs[0]->metrics->test_accuracy = 0.9701f;
  jobs[0]->metrics->test_loss = 0.1f;
  /* The second job predates owners: it has none. */
  jobs[0]->owner = strdup("alice\x1b[2J");
  td_table t;
  CHECK(td_view_jobs_table(&t, jobs, 2, 1714564800.0 + 600) == 0, "jobs table");
  capture c;
  cap_open(&c);
  td_table_print(&t, c.f);
  char *s = cap_close(&c);
  CHECK_STR(s, "ID    NAME       OWNER      STATE    PROGRESS       LOSS  TEST ACC  AGE\n"
               "j-1   mnist-mlp  alice?[2J  RUNNING  2/10 epochs  0.1235    97.01%  10m\n"
               "j-22  mnist-mlp  -          QUEUED   0/10 epochs       -         -  10m\n");
  free(s);
  td_table_free(&t);
  for (int i = 0; i < 2; i++)
    traind__v1__job__free_unpacked(jobs[i], NULL); /* all calloc/strdup: frees the same way */
}

/* `trainctl info`: the caller line and the plaintext network addresses
 * appear only when the daemon reports them. */
static void test_daemon_info(void) {
  Traind__V1__DaemonInfo info = TRAIND__V1__DAEMON_INFO__INIT;
  char *listen[] = {"unix:/run/traind/traind.sock", "0.0.0.0:7070"};
  info.version = "0.1.0";
  info.n_listen = 2;
  info.listen = listen;
  info.uptime_sec = 3723;
  capture c;
  cap_open(&c);
  td_view_daemon_info(c.f, &info, 0);
  char *s = cap_close(&c);
  CHECK_STR_CONTAINS(s, "version:        0.1.0\n");
  CHECK_STR_CONTAINS(s, "listen:         unix:/run/traind/traind.sock, 0.0.0.0:7070\n");
  CHECK(!strstr(s, "you are:") && !strstr(s, "insecure:"), "no caller, no insecure line:\n%s", s);
  free(s);
  info.n_insecure_listen = 1;
  info.insecure_listen = listen + 1;
  info.caller = "alice";
  info.caller_role = "user";
  cap_open(&c);
  td_view_daemon_info(c.f, &info, 0);
  s = cap_close(&c);
  CHECK_STR_CONTAINS(s, "insecure:       0.0.0.0:7070\n");
  CHECK_STR_CONTAINS(s, "you are:        alice (role user)\n");
  free(s);
}

static Traind__V1__JobSpec *load_reference_spec(void) {
  const char *src = getenv("TRAIND_SOURCE_DIR");
  char path[1024];
  snprintf(path, sizeof path, "%s/config/jobs/mnist_mlp.yaml", src ? src : "..");
  ProtobufCMessage *m = NULL;
  td_error err = {0};
  int rc = pbjson_parse_file(&traind__v1__job_spec__descriptor, path, &m, &err);
  CHECK(rc == 0, "parse %s: %s", path, err.msg);
  return (Traind__V1__JobSpec *)m;
}

static void test_job_detail(void) {
  Traind__V1__Job *j = make_job("j-7", TRAIND__V1__JOB_STATE__FAILED, 123);
  free(j->name);
  j->name = strdup("mnist\nmlp");
  j->error = strdup("step 123: loss is NaN");
  j->error_code = 13;
  j->spec = load_reference_spec();
  j->owner = strdup("unix:bob");
  capture c;
  cap_open(&c);
  td_view_job_detail(c.f, j, 1714564800.0 + 7200, 1);
  char *s = cap_close(&c);
  CHECK_STR_CONTAINS(s, "id:            j-7\n");
  CHECK_STR_CONTAINS(s, "name:          mnist?mlp\nowner:         unix:bob\n");
  CHECK_STR_CONTAINS(s, "state:         FAILED\n");
  CHECK_STR_CONTAINS(s, "error:         step 123: loss is NaN (INTERNAL)\n");
  CHECK_STR_CONTAINS(s, "progress:      0/10 epochs, step 123/4680 (3%)\n");
  CHECK_STR_CONTAINS(s, "created:       2024-05-01 12:00:00 (2h ago)\n");
  CHECK_STR_CONTAINS(s, "model:         784 \u2192 dense(256) relu dense(128) relu dense(10), "
                        "SOFTMAX_CROSS_ENTROPY\n");
  CHECK_STR_CONTAINS(s, "optimizer:     adam\n");
  CHECK_STR_CONTAINS(s, "dataset:       idx mnist\n");
  CHECK_STR_CONTAINS(s, "training:      10 epochs, batch 128, seed 0\n");
  CHECK(!strstr(s, "test:"), "no test line before an evaluation:\n%s", s);
  free(s);

  /* A record from before owners were kept. */
  free(j->owner);
  j->owner = strdup("");
  cap_open(&c);
  td_view_job_detail(c.f, j, 1714564800.0 + 7200, 1);
  s = cap_close(&c);
  CHECK_STR_CONTAINS(s, "owner:         - (submitted before owners were kept)\n");
  free(s);

  CHECK_STR(td_view_oneof_name(&j->spec->model->layers[1]->base), "relu");
  CHECK_STR(td_view_oneof_name(&j->spec->optimizer->chain[0]->base), "adam");
  Traind__V1__Layer empty = TRAIND__V1__LAYER__INIT;
  CHECK(td_view_oneof_name(&empty.base) == NULL, "no member set");
  traind__v1__job__free_unpacked(j, NULL);
}

/* Step points 1..n (loss = 1/step) and an epoch point every `per` steps. */
typedef struct points {
  Traind__V1__StepPoint **steps;
  Traind__V1__EpochPoint **epochs;
  size_t n_steps, n_epochs;
} points;

static points make_points(int64_t first, int64_t last, int64_t per) {
  points p = {0};
  p.steps = calloc((size_t)(last - first + 1), sizeof *p.steps);
  p.epochs = calloc((size_t)(last - first + 1), sizeof *p.epochs);
  for (int64_t s = first; s <= last; s++) {
    Traind__V1__StepPoint *sp = calloc(1, sizeof *sp);
    traind__v1__step_point__init(sp);
    sp->step = s;
    sp->epoch = (uint32_t)((s - 1) / per + 1);
    sp->loss = 1.0f / (float)s;
    sp->grad_norm = 0.5f;
    sp->learning_rate = 0.001f;
    sp->examples_per_sec = 45000;
    sp->step_ms = 2.5;
    p.steps[p.n_steps++] = sp;
    if (s % per == 0) {
      Traind__V1__EpochPoint *e = calloc(1, sizeof *e);
      traind__v1__epoch_point__init(e);
      e->epoch = (uint32_t)(s / per);
      e->step = s;
      e->train_loss = 0.25f;
      e->train_accuracy = 0.9f;
      e->evaluated = e->epoch > 1;
      e->test_loss = 0.125f;
      e->test_accuracy = 0.95f;
      e->epoch_sec = 1.5;
      e->examples_per_sec = 40000;
      p.epochs[p.n_epochs++] = e;
    }
  }
  return p;
}

static void free_points(points *p) {
  for (size_t i = 0; i < p->n_steps; i++)
    free(p->steps[i]);
  for (size_t i = 0; i < p->n_epochs; i++)
    free(p->epochs[i]);
  free(p->steps);
  free(p->epochs);
}

static void test_metrics(void) {
  points p = make_points(1, 4, 2);
  td_table t;
  CHECK(td_view_metrics_table(&t, p.steps, p.n_steps, p.epochs, p.n_epochs) == 0, "table");
  capture c;
  cap_open(&c);
  td_table_print(&t, c.f);
  char *s = cap_close(&c);
  CHECK_STR(s, "STEP  EPOCH    LOSS  GRAD NORM     LR   EX/S  STEP MS\n"
               "   1      1  1.0000        0.5  0.001  45.0k    2.500\n"
               "   2      1  0.5000        0.5  0.001  45.0k    2.500\n"
               "-- epoch 1  train loss 0.2500 acc 90.00%  1.50 s  40.0k ex/s (step 2)\n"
               "   3      2  0.3333        0.5  0.001  45.0k    2.500\n"
               "   4      2  0.2500        0.5  0.001  45.0k    2.500\n"
               "-- epoch 2  train loss 0.2500 acc 90.00%  test loss 0.1250 acc 95.00%  "
               "1.50 s  40.0k ex/s (step 4)\n");
  free(s);
  td_table_free(&t);

  cap_open(&c);
  td_view_metrics_csv(c.f, p.steps, 2, p.epochs, 1, 1);
  s = cap_close(&c);
  CHECK_STR(s, "kind,step,epoch,loss,grad_norm,learning_rate,examples_per_sec,step_ms,"
               "train_loss,train_accuracy,test_loss,test_accuracy,epoch_sec,time\n"
               "step,1,1,1,0.5,0.001,45000,2.5,,,,,,\n"
               "step,2,1,0.5,0.5,0.001,45000,2.5,,,,,,\n"
               "epoch,2,1,,,,40000,,0.25,0.9,,,1.5,\n");
  free(s);

  char line[256];
  td_view_epoch_line(p.epochs[1], 10, line, sizeof line);
  CHECK_STR(line, "epoch 2/10  train loss 0.2500 acc 90.00%  test loss 0.1250 acc 95.00%  "
                  "1.50 s  40.0k ex/s");
  free_points(&p);
}

/* JSON from pbjson_emit, to YAML, parsed back: the same message. */
static void check_yaml_roundtrip(const ProtobufCMessage *m) {
  char *json = pbjson_emit(m, PBJSON_INDENT);
  CHECK(json != NULL, "emit %s", m->descriptor->name);
  char *yaml = json ? td_view_json_to_yaml(json) : NULL;
  CHECK(yaml != NULL, "json to yaml of %s", m->descriptor->name);
  if (!yaml) {
    free(json);
    return;
  }
  ProtobufCMessage *back = NULL;
  td_error err = {0};
  int rc = pbjson_parse(m->descriptor, yaml, strlen(yaml), &back, &err);
  CHECK(rc == 0, "parse back: %s\n%s", err.msg, yaml);
  if (rc == 0) {
    size_t n1 = protobuf_c_message_get_packed_size(m);
    size_t n2 = protobuf_c_message_get_packed_size(back);
    uint8_t *b1 = malloc(n1 + 1), *b2 = malloc(n2 + 1);
    protobuf_c_message_pack(m, b1);
    protobuf_c_message_pack(back, b2);
    CHECK(n1 == n2 && memcmp(b1, b2, n1) == 0, "%s differs after YAML:\n%s", m->descriptor->name,
          yaml);
    free(b1);
    free(b2);
    protobuf_c_message_free_unpacked(back, NULL);
  }
  free(json);
  free(yaml);
}

static void test_yaml(void) {
  Traind__V1__JobSpec *spec = load_reference_spec();
  if (spec) {
    check_yaml_roundtrip(&spec->base);
    protobuf_c_message_free_unpacked(&spec->base, NULL);
  }
  /* Strings YAML would read as something else stay strings. */
  Traind__V1__Job *j = make_job("123", TRAIND__V1__JOB_STATE__SUCCEEDED, 4680);
  free(j->name);
  j->name = strdup("true");
  j->error = strdup("line 1: 'x': bad # not a comment\nsecond line");
  char *devs[] = {"cpu:0", "yes", "", " padded "};
  j->n_devices = 4;
  j->devices = devs;
  j->created->nanos = 1000;
  check_yaml_roundtrip(&j->base);
  char *json = pbjson_emit(&j->base, PBJSON_INDENT);
  char *yaml = td_view_json_to_yaml(json);
  CHECK_STR_CONTAINS(yaml, "id: '123'\n");
  CHECK_STR_CONTAINS(yaml, "name: 'true'\n");
  CHECK_STR_CONTAINS(yaml, "state: SUCCEEDED\n");
  CHECK_STR_CONTAINS(yaml, "totalEpochs: 10\n");
  free(json);
  free(yaml);
  j->n_devices = 0;
  j->devices = NULL;
  traind__v1__job__free_unpacked(j, NULL);
  char *small = td_view_json_to_yaml("{\"a\": 1, \"b\": [], \"c\": {}}");
  CHECK_STR(small ? small : "(null)", "a: 1\nb: []\nc: {}\n");
  free(small);
  CHECK(td_view_json_to_yaml("{\"a\": [1, 2") == NULL, "bad JSON gives NULL");
}

/* A WatchMetricsResponse for steps first..last of a 3 x 10-step job. */
static Traind__V1__WatchMetricsResponse *watch_msg(Traind__V1__Job *job, points *p, int64_t first,
                                                   int64_t last) {
  static Traind__V1__WatchMetricsResponse m;
  traind__v1__watch_metrics_response__init(&m);
  *p = make_points(first, last, 10);
  m.steps = p->steps;
  m.n_steps = p->n_steps;
  m.epochs = p->epochs;
  m.n_epochs = p->n_epochs;
  m.job = job;
  if (job->progress && last > job->progress->step)
    job->progress->step = last;
  return &m;
}

static Traind__V1__Job *follow_job(void) {
  Traind__V1__Job *j = make_job("j-9", TRAIND__V1__JOB_STATE__RUNNING, 0);
  j->progress->total_steps = 30;
  j->progress->total_epochs = 3;
  j->progress->steps_per_epoch = 10;
  return j;
}

static void test_follow_plain(void) {
  Traind__V1__Job *j = follow_job();
  capture c;
  cap_open(&c);
  td_follow f;
  td_follow_init(&f, c.f, 0, 1, 80);
  points p;
  td_follow_feed(&f, watch_msg(j, &p, 1, 12), 0.0);
  free_points(&p);
  /* A repeated point and a repeated epoch are shown once. */
  td_follow_feed(&f, watch_msg(j, &p, 10, 20), 0.01);
  free_points(&p);
  float curve[TD_FOLLOW_BUCKETS];
  CHECK(td_follow_curve(&f, curve, TD_FOLLOW_BUCKETS) == 20, "steps 10-12 counted twice");
  j->state = TRAIND__V1__JOB_STATE__FAILED;
  j->error = strdup("step 21: loss is NaN");
  td_follow_feed(&f, watch_msg(j, &p, 21, 21), 0.02);
  free_points(&p);
  td_follow_finish(&f);
  char *s = cap_close(&c);
  CHECK_STR(s, "epoch 1/3  train loss 0.2500 acc 90.00%  1.50 s  40.0k ex/s\n"
               "epoch 2/3  train loss 0.2500 acc 90.00%  test loss 0.1250 acc 95.00%  "
               "1.50 s  40.0k ex/s\n"
               "job j-9 (mnist-mlp) FAILED at step 21/30: step 21: loss is NaN\n");
  free(s);
  traind__v1__job__free_unpacked(j, NULL);

  /* SUCCEEDED shows the final test accuracy and the time the job ran. */
  j = follow_job();
  cap_open(&c);
  td_follow_init(&f, c.f, 0, 1, 80);
  j->state = TRAIND__V1__JOB_STATE__SUCCEEDED;
  j->started = calloc(1, sizeof *j->started);
  google__protobuf__timestamp__init(j->started);
  j->started->seconds = 1000;
  j->finished = calloc(1, sizeof *j->finished);
  google__protobuf__timestamp__init(j->finished);
  j->finished->seconds = 1123;
  j->metrics->test_accuracy = 0.9785f;
  j->metrics->test_loss = 0.0712f;
  td_follow_feed(&f, watch_msg(j, &p, 30, 30), 0.0);
  free_points(&p);
  td_follow_finish(&f);
  s = cap_close(&c);
  CHECK_STR(s, "epoch 3/3  train loss 0.2500 acc 90.00%  test loss 0.1250 acc 95.00%  "
               "1.50 s  40.0k ex/s\n"
               "job j-9 (mnist-mlp) SUCCEEDED in 2:03  test accuracy 97.85% (loss 0.0712)\n");
  free(s);
  traind__v1__job__free_unpacked(j, NULL);
}

static void test_follow_tty(void) {
  Traind__V1__Job *j = follow_job();
  j->started = calloc(1, sizeof *j->started);
  google__protobuf__timestamp__init(j->started);
  j->started->seconds = 1000;
  capture c;
  cap_open(&c);
  td_follow f;
  td_follow_init(&f, c.f, 1, 1, 100);

  /* Queued: one line, no curve. */
  j->state = TRAIND__V1__JOB_STATE__QUEUED;
  Traind__V1__WatchMetricsResponse q = TRAIND__V1__WATCH_METRICS_RESPONSE__INIT;
  q.job = j;
  td_follow_feed(&f, &q, 0.0);
  char buf[2048];
  CHECK(td_follow_render(&f, buf, sizeof buf) == 1, "one line while queued");
  CHECK_STR(buf, "job j-9 (mnist-mlp) QUEUED, waiting for a device");

  /* Running, 5 of 30 steps, 10 s after the start by the daemon's clock:
   * 0.5 steps/s, 25 steps to go, ETA 0:50. */
  j->state = TRAIND__V1__JOB_STATE__RUNNING;
  points p;
  Traind__V1__WatchMetricsResponse *m = watch_msg(j, &p, 1, 5);
  Google__Protobuf__Timestamp t = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  t.seconds = 1010;
  p.steps[4]->time = &t;
  td_follow_feed(&f, m, 0.05); /* a state change redraws at once */
  p.steps[4]->time = NULL;
  free_points(&p);
  CHECK(td_follow_render(&f, buf, sizeof buf) == 2, "bar and curve");
  const char *rendered = buf;
  CHECK_STR_CONTAINS(rendered,
                     "\u2502  16.7%  step 5/30  epoch 1/3  loss 0.2000  45.0k ex/s  ETA 0:50\n");
  /* log(1/s) for s = 1..5, scaled over [log 0.2, 0]: levels 7, 4, 2, 1, 0. */
  CHECK_STR_CONTAINS(rendered, "loss (log) \u2588\u2585\u2583\u2582\u2581  min 0.2000  max 1.0000");

  /* Within 0.1 s of the last redraw nothing is drawn; after it, it is. */
  size_t before = 0;
  fflush(c.f);
  before = count_of(c.text, "\r\033[K");
  td_follow_feed(&f, watch_msg(j, &p, 6, 6), 0.10);
  free_points(&p);
  fflush(c.f);
  CHECK(count_of(c.text, "\r\033[K") == before, "redrawn within 0.1 s");
  td_follow_feed(&f, watch_msg(j, &p, 7, 7), 0.20);
  free_points(&p);
  fflush(c.f);
  CHECK(count_of(c.text, "\r\033[K") > before, "not redrawn after 0.1 s");
  CHECK(count_of(c.text, "\033[1A") > 0, "the two-line block is redrawn in place");

  /* An epoch end prints a permanent line above the block, at once. */
  td_follow_feed(&f, watch_msg(j, &p, 8, 10), 0.21);
  free_points(&p);
  fflush(c.f);
  CHECK_STR_CONTAINS(c.text, "\r\033[K\033[1A\r\033[Kepoch 1/3  train loss 0.2500");

  j->state = TRAIND__V1__JOB_STATE__CANCELLED;
  j->error = strdup("cancelled by a client");
  td_follow_feed(&f, &q, 0.3);
  td_follow_finish(&f);
  char *s = cap_close(&c);
  const char *tail = "\033[?25hjob j-9 (mnist-mlp) CANCELLED at step 10/30: cancelled by a "
                     "client\n";
  size_t ls = strlen(s), lt = strlen(tail);
  CHECK(ls >= lt && strcmp(s + ls - lt, tail) == 0, "ends with the final line: ...%s",
        ls > 120 ? s + ls - 120 : s);
  CHECK(count_of(s, "\033[?25l") == count_of(s, "\033[?25h"), "cursor hidden and shown in pairs");
  free(s);
  traind__v1__job__free_unpacked(j, NULL);

  /* Narrow terminals: every line fits in cols - 1, dropping ex/s first. */
  j = follow_job();
  for (int cols = 40; cols <= 120; cols += 20) {
    cap_open(&c);
    td_follow_init(&f, c.f, 1, 1, cols);
    td_follow_feed(&f, watch_msg(j, &p, 1, 5), 0.0);
    free_points(&p);
    td_follow_render(&f, buf, sizeof buf);
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
      CHECK(td_view_width(line) <= (size_t)cols - 1, "cols %d: %s", cols, line);
    s = cap_close(&c);
    free(s);
    j->progress->step = 0;
  }
  traind__v1__job__free_unpacked(j, NULL);
}

static void test_follow_curve(void) {
  td_follow f;
  td_follow_init(&f, stdout, 0, 1, 80);
  Traind__V1__Job *j = follow_job();
  j->progress->total_steps = 1000;
  /* Losses 1..200: buckets merge at 60 and 120 points, so 200 points end
   * as 50 buckets of 4 (the span doubled twice). */
  for (int64_t s = 1; s <= 200; s++) {
    Traind__V1__StepPoint sp = TRAIND__V1__STEP_POINT__INIT, *psp = &sp;
    sp.step = s;
    sp.loss = (float)s;
    Traind__V1__WatchMetricsResponse m = TRAIND__V1__WATCH_METRICS_RESPONSE__INIT;
    m.steps = &psp;
    m.n_steps = 1;
    td_follow_feed(&f, &m, 0.0);
  }
  float curve[TD_FOLLOW_BUCKETS];
  size_t n = td_follow_curve(&f, curve, TD_FOLLOW_BUCKETS);
  CHECK(n == 50, "buckets %zu", n);
  CHECK(f.span == 4, "span %u", f.span);
  CHECK_CLOSE(curve[0], 2.5, 1e-6, 1e-6);
  CHECK_CLOSE(curve[49], 198.5, 1e-6, 1e-6);
  traind__v1__job__free_unpacked(j, NULL);
}

int main(void) {
  setenv("TZ", "UTC", 1);
  tzset();
  test_text();
  test_bar_and_sparkline();
  test_table();
  test_jobs_table();
  test_job_detail();
  test_daemon_info();
  test_metrics();
  test_yaml();
  test_follow_plain();
  test_follow_tty();
  test_follow_curve();
  return td_check_exit();
}
