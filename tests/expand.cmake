# Repeats (engine/expand.c): `repeat` layers expanded into flat lists of
# layers, names and inputs against the rules of docs/job-spec.md, the
# errors, and an expanded model compiled.
td_test(test_expand SOURCES test_expand.c)
