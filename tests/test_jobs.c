/* Job ids and records (daemon/jobs.c) on a temporary state directory:
 * the id grammar; ids made in a burst are distinct and increasing; the
 * first save of a job never replaces a record of that name (the job takes
 * the next id); loading seeds new ids past every id seen; device lists
 * sized from the count (200 devices). The daemon end to end is
 * tests/e2e/daemon_state_dir.py. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "jobs.h"
#include "jobspec.h"

static const char SPEC[] =
    "model: {input_shape: [4], layers: [{dense: {features: 2}}], loss: SOFTMAX_CROSS_ENTROPY}\n"
    "optimizer: {chain: [{sgd: {learning_rate: {constant: 0.1}}}]}\n"
    "dataset: {hdf5: {train_file: x.h5}}\n"
    "training: {epochs: 1, batch_size: 2}\n";

static td_job *new_job(void) {
  Traind__V1__JobSpec *spec = NULL;
  td_error err = {0};
  int rc = td_jobspec_parse(SPEC, sizeof SPEC - 1, &spec, &err);
  CHECK(rc == TD_OK, "spec: %s", err.msg);
  return rc ? NULL : td_job_new(spec, "t", 0);
}

static void test_id_grammar(void) {
  const char *good[] = {"j-0", "j-0123456789abcd", "j-nosuchjob",
                        "j-zzzzzzzzzzzzzzzzzzzzzzzzzzzzz"};
  const char *bad[] = {"",
                       "j-",
                       "J-1",
                       "j-A",
                       "x-1",
                       "../../victim",
                       "j-1/2",
                       "j-1.pb",
                       "j-a b",
                       "j-\xc3\xa9",
                       "j-zzzzzzzzzzzzzzzzzzzzzzzzzzzzzz" /* 30 */,
                       "j-1\n"};
  for (size_t i = 0; i < sizeof good / sizeof *good; i++)
    CHECK(td_job_id_valid(good[i]), "'%s' should be a job id", good[i]);
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    CHECK(!td_job_id_valid(bad[i]), "'%s' should not be a job id", bad[i]);
  CHECK(!td_job_id_valid(NULL), "NULL is no id");
}

static void test_burst(void) {
  enum { N = 5000 };
  char(*ids)[TD_JOB_ID_MAX] = calloc(N, sizeof *ids);
  int ok = 1;
  for (int i = 0; i < N && ok; i++) {
    td_job *j = new_job();
    if (!j)
      break;
    memcpy(ids[i], j->id, TD_JOB_ID_MAX);
    ok = td_job_id_valid(ids[i]) && strlen(ids[i]) == 16 && (!i || strcmp(ids[i - 1], ids[i]) < 0);
    CHECK(ok, "id %d: '%s' after '%s'", i, ids[i], i ? ids[i - 1] : "");
    td_job_free(j);
  }
  free(ids);
}

static size_t count_records(const char *dir) {
  DIR *d = opendir(dir);
  size_t n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)))
    n += strlen(e->d_name) > 3 && strcmp(e->d_name + strlen(e->d_name) - 3, ".pb") == 0;
  if (d)
    closedir(d);
  return n;
}

static int n_bad;
static void on_bad(const td_job_bad *b) {
  (void)b;
  n_bad++;
}

static void test_save_and_seed(void) {
  char root[] = "/tmp/td-jobs-XXXXXX";
  CHECK(mkdtemp(root) != NULL, "mkdtemp");
  char jobs[256], path[512];
  snprintf(jobs, sizeof jobs, "%s/jobs", root);
  td_error err = {0};

  /* A file in the way of the next id: the job takes the one after. */
  td_job *probe = new_job();
  td_job *a = new_job();
  if (!probe || !a)
    return;
  /* a's id is probe's + 1; put a file where a's record would go. */
  CHECK(td_job_save(probe, root, &err) == TD_OK, "save: %s", err.msg);
  snprintf(path, sizeof path, "%s/%s.pb", jobs, a->id);
  FILE *f = fopen(path, "w");
  CHECK(f != NULL, "cannot create %s", path);
  if (f) {
    fputs("not mine", f);
    fclose(f);
  }
  char taken[TD_JOB_ID_MAX];
  memcpy(taken, a->id, sizeof taken);
  CHECK(td_job_save(a, root, &err) == TD_OK, "save: %s", err.msg);
  CHECK(strcmp(a->id, taken) != 0, "the job kept the id %s whose name was taken", a->id);
  f = fopen(path, "r");
  char buf[32] = {0};
  if (f) {
    CHECK(fread(buf, 1, sizeof buf - 1, f) == 8 && strcmp(buf, "not mine") == 0,
          "the file in the way was overwritten: '%s'", buf);
    fclose(f);
  }
  CHECK(count_records(jobs) == 3, "%zu records, expected 3", count_records(jobs));
  /* A later save of the same job replaces its own record. */
  a->state = TRAIND__V1__JOB_STATE__CANCELLED;
  CHECK(td_job_save(a, root, &err) == TD_OK, "second save: %s", err.msg);
  CHECK(count_records(jobs) == 3, "a second save added a record");

  /* A record far ahead: loading moves new ids past it. */
  snprintf(a->id, sizeof a->id, "j-7ffffffe000010");
  a->on_disk = 0;
  CHECK(td_job_save(a, root, &err) == TD_OK, "save ahead: %s", err.msg);
  td_job **loaded = NULL;
  size_t n = 0;
  n_bad = 0;
  CHECK(td_job_load_all(root, &loaded, &n, on_bad, &err) == TD_OK, "load: %s", err.msg);
  /* probe, a (taken id), a (ahead); "not mine" is set aside. */
  CHECK(n == 3 && n_bad == 1, "loaded %zu, %d bad", n, n_bad);
  for (size_t i = 0; i < n; i++)
    td_job_free(loaded[i]);
  free(loaded);
  td_job *b = new_job();
  if (b) {
    CHECK(strcmp(b->id, "j-7ffffffe000011") == 0, "the id after loading j-7ffffffe000010 is %s",
          b->id);
    td_job_free(b);
  }
  td_job_free(probe);
  td_job_free(a);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  CHECK(system(cmd) == 0, "cleanup");
}

static void test_devices(void) {
  td_job *j = new_job();
  if (!j)
    return;
  CHECK(td_job_devices_reserve(j, 200) == TD_OK, "reserve 200");
  for (int i = 0; i < 201; i++) /* one more than reserved is ignored */
    td_job_devices_add(j, 1000 - i);
  CHECK(j->n_devices == 200, "%d devices", j->n_devices);
  CHECK(strcmp(j->device_names[199], "cpu:801") == 0, "name of the last: %s", j->device_names[199]);
  td_job_msg *m = malloc(sizeof *m);
  td_job_msg_fill(m, j, NULL);
  CHECK(m->job.n_devices == 200 && strcmp(m->job.devices[0], "cpu:1000") == 0,
        "message: %zu devices", m->job.n_devices);
  free(m);
  td_job_devices_clear(j);
  CHECK(j->n_devices == 0 && !j->devices, "cleared");
  td_job_free(j);
}

int main(void) {
  test_id_grammar();
  test_burst();
  test_save_and_seed();
  test_devices();
  return td_check_exit();
}
