/* Backend-independent helpers of the kernel interface. */
#include "backend.h"

int td_act_needs_preact(td_act act) { return act == TD_ACT_GELU_TANH || act == TD_ACT_GELU_ERF; }

const char *td_act_name(td_act act) {
  switch (act) {
  case TD_ACT_NONE:
    return "none";
  case TD_ACT_RELU:
    return "relu";
  case TD_ACT_GELU_TANH:
    return "gelu";
  case TD_ACT_GELU_ERF:
    return "gelu_exact";
  case TD_ACT_TANH:
    return "tanh";
  case TD_ACT_SIGMOID:
    return "sigmoid";
  }
  return "?";
}

void td_backend_destroy(td_backend *be) {
  if (be)
    be->ops->destroy(be);
}
