/* Structured logs: one logfmt line per record on stderr,
 *   time=2026-11-24T20:30:00.123Z level=info msg="job started" job=j-1a2b
 * Safe from any thread (each record is written with one fwrite). */
#ifndef TD_LOG_H
#define TD_LOG_H

typedef enum td_log_level {
  TD_LOG_ERROR = 0,
  TD_LOG_WARN,
  TD_LOG_INFO,
  TD_LOG_DEBUG,
} td_log_level;

/* "error", "warn", "info", "debug"; returns -1 for anything else. */
int td_log_parse_level(const char *name);
void td_log_set_level(td_log_level level);
int td_log_enabled(td_log_level level);

/* msg is the human message; fmt/... append key=value pairs in logfmt form
 * ("job=%s step=%lld"), or fmt may be NULL. The format's own text is
 * written as is, so keys and separators belong there; every string argument
 * is a value and is escaped, so that no value can end its field or the line
 * (a job name with a newline or " peer=" forges nothing): %s written bare
 * when it is one plain token, else quoted with \" \\ \n \r \t and \xNN
 * (controls and bytes that are not UTF-8) escapes; inside quotes the format
 * already has (name=\"%s\") only the escapes are added. The message is
 * always quoted and escaped the same way. A record is at most 2047 bytes
 * plus its newline; longer ones are cut. */
void td_log(td_log_level level, const char *msg, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define td_log_error(msg, ...) td_log(TD_LOG_ERROR, msg, __VA_ARGS__)
#define td_log_warn(msg, ...) td_log(TD_LOG_WARN, msg, __VA_ARGS__)
#define td_log_info(msg, ...) td_log(TD_LOG_INFO, msg, __VA_ARGS__)
#define td_log_debug(msg, ...) td_log(TD_LOG_DEBUG, msg, __VA_ARGS__)

#endif
