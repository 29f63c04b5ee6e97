/* Admission and checkpoints around a job's run (see driver.h). */
#include "driver.h"

#include <stdlib.h>
#include <string.h>

#include "gpus.h"
#include "log.h"
#include "pbjson.h"

/* ---- admission ---------------------------------------------------------- */

int td_job_admit(const Traind__V1__JobSpec *spec, const td_trainer_opts *o, const td_admission *a,
                 td_footprint *out, td_error *err) {
  int rc = td_job_footprint(spec, o, out, err);
  if (rc)
    return rc;
  if (!a->checkpoints)
    td_footprint_no_checkpoints(out);
  if (a->add)
    a->add(a->add_user, out);
  if (a->mem && (rc = td_footprint_admit(out, a->mem, 0, err)))
    return rc;
  for (int i = 0; i < a->n_gpus; i++) {
    if (a->unchecked && a->unchecked[i])
      continue;
    size_t free_bytes = 0, total_bytes = 0;
    td_error qerr = {0};
    if (td_gpu_memory(a->gpus[i], &free_bytes, &total_bytes, &qerr)) {
      td_log_warn("cannot query GPU memory; not checking the job's size on it", "gpu=%d err=\"%s\"",
                  a->gpus[i], qerr.msg);
      continue;
    }
    td_footprint g = *out;
    if (i == 0 && a->checkpoints)
      g.total_bytes += g.resume_bytes; /* a resume's second state on replica 0 */
    if ((rc = td_footprint_fits(&g, a->gpus[i], free_bytes, err)))
      return rc;
  }
  return TD_OK;
}

/* ---- checkpoints -------------------------------------------------------- */

static uint64_t requests(const td_driver *d) { return d->save_req ? atomic_load(d->save_req) : 0; }

/* The tag of a snapshot taken now: the requests so far, which it covers. */
static uint64_t snapshot_gen(void *user) {
  td_driver *d = user;
  d->save_taken = requests(d);
  return d->save_taken;
}

static int driver_give_up(void *user) {
  td_driver *d = user;
  return d->give_up ? d->give_up(d->give_up_user) : 0;
}

int td_driver_start(td_driver *d, td_trainer *t, const td_driver_opts *o, td_driver_resumed *r,
                    td_error *err) {
  memset(d, 0, sizeof *d);
  memset(r, 0, sizeof *r);
  const Traind__V1__Checkpointing *c = t->spec->checkpoint;
  d->policy = c;
  d->save_req = o->save_req;
  d->final_retry_sec = o->final_retry_sec;
  d->give_up = o->give_up;
  d->give_up_user = o->give_up_user;
  if (!(d->spec_json = pbjson_emit(&t->spec->base, PBJSON_PROTO_NAMES)))
    return td_errorf(err, TD_ENOMEM, "out of memory");
  td_saver_opts so = {.plan = t->plan,
                      .dir = o->dir,
                      .job_id = o->job_id,
                      .spec = t->spec,
                      .spec_json = d->spec_json,
                      .keep_last = c && c->keep_last ? c->keep_last : TD_DRIVER_KEEP_LAST,
                      .keep_every = c ? c->keep_every_steps : 0,
                      .done = o->done,
                      .user = o->user};
  int rc = td_saver_start(&d->saver, &so, err);
  if (rc) {
    free(d->spec_json);
    d->spec_json = NULL;
    return rc;
  }
  d->started = 1;
  r->resumed = td_saver_resume(&d->saver, t, r->file, sizeof r->file, r->note, sizeof r->note);
  return TD_OK;
}

int td_driver_boundary(td_driver *d, td_trainer *t, td_error *err) {
  td_ckpt_reason reason;
  uint64_t req = requests(d);
  if (req > d->save_taken)
    reason = TD_CKPT_REQUESTED;
  else if (td_saver_due(&d->saver, d->policy, t->st.step))
    reason = TD_CKPT_PERIODIC;
  else
    return TD_OK;
  if (td_saver_busy(&d->saver))
    return TD_OK; /* at a later boundary */
  int rc = td_saver_snapshot(&d->saver, t, reason, req, err);
  if (!rc)
    d->save_taken = req;
  return rc;
}

int td_driver_finish(td_driver *d, td_trainer *t, int rc, int shutdown, td_error *err,
                     td_error *warn) {
  td_ckpt_reason reason;
  if (rc == TD_OK)
    reason = TD_CKPT_FINAL;
  else if (rc == TD_ECANCELLED && shutdown)
    reason = TD_CKPT_SHUTDOWN;
  else {
    td_driver_stop(d);
    return rc;
  }
  td_saver_wait(&d->saver);
  int force = requests(d) > d->save_taken; /* a request waits for this one */
  td_saver_retry r = {.retry_sec = reason == TD_CKPT_FINAL ? d->final_retry_sec : 0.0,
                      .give_up = driver_give_up,
                      .gen = snapshot_gen,
                      .user = d};
  td_error perr = {0};
  int prc = td_saver_persist(&d->saver, t, reason, force, &r, &perr);
  td_driver_stop(d);
  if (prc && reason == TD_CKPT_FINAL) {
    *err = perr;
    return prc;
  }
  if (prc)
    *warn = perr;
  return rc;
}

void td_driver_stop(td_driver *d) {
  if (d->started)
    td_saver_stop(&d->saver);
  d->started = 0;
  free(d->spec_json);
  d->spec_json = NULL;
}
