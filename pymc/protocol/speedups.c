/*
 * pymc.protocol.speedups: the compiled twins of two hot loops of pymc/protocol.py and of the meta
 * reply-line parser of pymc/meta.py.
 *
 * The pure-Python code in protocol.py and meta.py is the reference; these functions only
 * speed up what it does and must agree with it in every result and every error. They keep
 * no state (beyond a few constant objects made at import) and do no I/O: protocol.py owns
 * the reader's buffer, position and poisoning, hands the buffer in and applies what comes
 * back; meta.py raises a malformed line's message through reader.fail.
 *
 *   scan_values(buf, pos, cap, wanted, found) -> (code, a, b)
 *       The value loop of Reader.read_values, from offset ``pos`` of the bytes ``buf``.
 *       Complete values go into ``found`` as key: (flags, data, cas). The code says what
 *       stopped the loop (see the SCAN_* constants below, mirrored in protocol.py).
 *
 *   check_keys(keys, prefix, limit) -> dict | None
 *       The one-scan fast path of validate_keys over a list or tuple: {prefix + raw: key},
 *       or None when any key needs the one-by-one path (which then says what is wrong).
 *
 *   parse_meta_head(line, make) -> make(code, size, fields) | str
 *       meta.py's _parse_head (see its section below); a str is a malformed line's message.
 *
 *   scan_meta_quiet(...), encode_meta_quiet(...)
 *       The reader of a quiet meta pipeline's common replies (ExpectMetaQuiet's loop) and
 *       the encoder of a quiet get pipeline: see their section below.
 *
 * Memory safety: every read is bounds-checked against the buffer's length before it is
 * made; sizes are at most 18 decimal digits, so they fit an int64 with room to add a
 * buffer offset; no arithmetic on a size is done before its digits are checked.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Must match protocol.py's MAX_LINE_LENGTH. */
#define MAX_LINE_LENGTH 8192

/* What stopped scan_values (protocol.py holds the same numbers). */
#define SCAN_END 0       /* "END\r\n" consumed: (0, pos after it, None) */
#define SCAN_OTHER 1     /* not a VALUE line or END: (1, pos, None); next_reply decides */
#define SCAN_NEED 2      /* a value not complete yet: (2, pos of its line, bytes needed) */
#define SCAN_MALFORMED 3 /* (3, pos, end): the VALUE line buf[pos:end] does not parse */
#define SCAN_TOO_BIG 4   /* (4, pos, end): its block is larger than cap */
#define SCAN_NO_CRLF 5   /* (5, pos, end): its block is not followed by CRLF */
#define SCAN_UNWANTED 6  /* (6, key, None): a key not asked for, or answered twice */
#define SCAN_NOT_BYTES 7 /* (7, pos, None): buf is not exactly bytes; use the pure loop */

static PyObject *
result(int code, PyObject *a, PyObject *b)
{
    /* Steals references to a and b (either may be NULL after a failed allocation). */
    PyObject *out = NULL;
    if (a != NULL && b != NULL) {
        out = PyTuple_New(3);
        if (out != NULL) {
            PyObject *c = PyLong_FromLong(code);
            if (c == NULL) {
                Py_DECREF(out);
                out = NULL;
            }
            else {
                PyTuple_SET_ITEM(out, 0, c);
                PyTuple_SET_ITEM(out, 1, a);
                PyTuple_SET_ITEM(out, 2, b);
                return out;
            }
        }
    }
    Py_XDECREF(a);
    Py_XDECREF(b);
    return NULL;
}

static PyObject *
result_pos(int code, Py_ssize_t a, PyObject *b)
{
    return result(code, PyLong_FromSsize_t(a), b);
}

static PyObject *
result_span(int code, Py_ssize_t a, Py_ssize_t b)
{
    return result(code, PyLong_FromSsize_t(a), PyLong_FromSsize_t(b));
}

/* bytes.isdigit(): non-empty, ASCII digits only. */
static int
all_digits(const char *p, Py_ssize_t n)
{
    if (n <= 0) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return 0;
        }
    }
    return 1;
}

/* The value of at most 18 checked digits: below 10**18, no overflow. */
static int64_t
digits_value(const char *p, Py_ssize_t n)
{
    int64_t v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

static PyObject *
scan_values(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "scan_values takes 5 arguments");
        return NULL;
    }
    PyObject *bufobj = args[0];
    PyObject *wanted = args[3];
    PyObject *found = args[4];
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (pos < 0) {
        PyErr_SetString(PyExc_ValueError, "scan_values: negative position");
        return NULL;
    }
    /* cap: None (no cap) or a non-negative int; one too large for int64 is no cap. */
    int64_t cap = -1;
    if (args[2] != Py_None) {
        int overflow = 0;
        long long c = PyLong_AsLongLongAndOverflow(args[2], &overflow);
        if (c == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (overflow < 0 || (overflow == 0 && c < 0)) {
            PyErr_SetString(PyExc_ValueError, "scan_values: negative cap");
            return NULL;
        }
        cap = overflow > 0 ? -1 : (int64_t)c;
    }
    if (!PyBytes_CheckExact(bufobj)) {
        return result_pos(SCAN_NOT_BYTES, pos, Py_NewRef(Py_None));
    }
    const char *buf = PyBytes_AS_STRING(bufobj);
    const Py_ssize_t len = PyBytes_GET_SIZE(bufobj);
    const int exact_found = PyDict_CheckExact(found);

    for (;;) {
        if (pos > len || len - pos < 6 || memcmp(buf + pos, "VALUE ", 6) != 0) {
            if (pos <= len && len - pos >= 5 && memcmp(buf + pos, "END\r\n", 5) == 0) {
                return result_pos(SCAN_END, pos + 5, Py_NewRef(Py_None));
            }
            return result_pos(SCAN_OTHER, pos, Py_NewRef(Py_None));
        }
        /* The first CRLF at pos or after, but only if the line is at most
         * MAX_LINE_LENGTH long: end - pos <= MAX_LINE_LENGTH, and end + 1 < len. */
        Py_ssize_t end = -1;
        {
            Py_ssize_t last = len - 2; /* the last offset a CRLF can start at */
            if (last > pos + MAX_LINE_LENGTH) {
                last = pos + MAX_LINE_LENGTH;
            }
            const char *p = buf + pos;
            const char *stop = buf + last;
            while (p <= stop) {
                const char *cr = memchr(p, '\r', (size_t)(stop - p + 1));
                if (cr == NULL) {
                    break;
                }
                if (cr[1] == '\n') { /* cr <= buf + len - 2: cr[1] is in bounds */
                    end = cr - buf;
                    break;
                }
                p = cr + 1;
            }
        }
        if (end < 0) {
            return result_pos(SCAN_OTHER, pos, Py_NewRef(Py_None));
        }
        /* Split buf[pos + 6:end] on single spaces into 3 or 4 fields. */
        const char *field[5];
        Py_ssize_t flen[5];
        int nf = 0;
        {
            const char *p = buf + pos + 6;
            const char *e = buf + end;
            const char *start = p;
            for (;;) {
                const char *sp = (p < e) ? memchr(p, ' ', (size_t)(e - p)) : NULL;
                const char *fe = sp ? sp : e;
                if (nf < 5) {
                    field[nf] = start;
                    flen[nf] = fe - start;
                }
                nf++;
                if (sp == NULL || nf > 4) {
                    if (sp != NULL) {
                        nf++; /* more than 4 fields: malformed however many */
                    }
                    break;
                }
                p = start = sp + 1;
            }
        }
        if (nf != 3 && nf != 4) {
            return result_span(SCAN_MALFORMED, pos, end);
        }
        if (nf == 4 && (!all_digits(field[3], flen[3]) || flen[3] > 20)) {
            return result_span(SCAN_MALFORMED, pos, end);
        }
        if (!all_digits(field[1], flen[1]) || !all_digits(field[2], flen[2]) || flen[1] > 10 ||
            flen[2] > 18) {
            return result_span(SCAN_MALFORMED, pos, end);
        }
        const int64_t size = digits_value(field[2], flen[2]);
        const Py_ssize_t start = end + 2;
        if (cap >= 0 && size > cap) {
            return result_span(SCAN_TOO_BIG, pos, end);
        }
        /* start <= len; size < 10**18: the sum cannot overflow an int64. */
        if ((int64_t)len < (int64_t)start + size + 2) {
            return result(SCAN_NEED, PyLong_FromSsize_t(pos),
                          PyLong_FromLongLong((long long)((int64_t)start + size + 2 - pos)));
        }
        const Py_ssize_t stop = start + (Py_ssize_t)size;
        if (buf[stop] != '\r' || buf[stop + 1] != '\n') {
            return result_span(SCAN_NO_CRLF, pos, end);
        }
        PyObject *key = PyBytes_FromStringAndSize(field[0], flen[0]);
        if (key == NULL) {
            return NULL;
        }
        int ok = PySequence_Contains(wanted, key);
        if (ok == 1) {
            ok = exact_found ? PyDict_Contains(found, key) : PySequence_Contains(found, key);
            if (ok >= 0) {
                ok = !ok;
            }
        }
        if (ok < 0) {
            Py_DECREF(key);
            return NULL;
        }
        if (ok == 0) {
            return result(SCAN_UNWANTED, key, Py_NewRef(Py_None));
        }
        PyObject *item = PyTuple_New(3);
        if (item == NULL) {
            Py_DECREF(key);
            return NULL;
        }
        PyObject *flags = PyLong_FromLongLong((long long)digits_value(field[1], flen[1]));
        PyObject *data = PyBytes_FromStringAndSize(buf + start, stop - start);
        PyObject *cas = nf == 4 ? PyBytes_FromStringAndSize(field[3], flen[3])
                                : Py_NewRef(Py_None);
        if (flags == NULL || data == NULL || cas == NULL) {
            Py_XDECREF(flags);
            Py_XDECREF(data);
            Py_XDECREF(cas);
            Py_DECREF(item);
            Py_DECREF(key);
            return NULL;
        }
        PyTuple_SET_ITEM(item, 0, flags);
        PyTuple_SET_ITEM(item, 1, data);
        PyTuple_SET_ITEM(item, 2, cas);
        ok = exact_found ? PyDict_SetItem(found, key, item) : PyObject_SetItem(found, key, item);
        Py_DECREF(item);
        Py_DECREF(key);
        if (ok < 0) {
            return NULL;
        }
        pos = stop + 2;
    }
}

/* A byte the server treats as a separator or terminator: control, space, DEL. */
static inline int
bad_key_byte(unsigned char c)
{
    return c <= 0x20 || c == 0x7f;
}

static int
any_bad_byte(const char *p, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (bad_key_byte((unsigned char)p[i])) {
            return 1;
        }
    }
    return 0;
}

static PyObject *
check_keys(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "check_keys takes 3 arguments");
        return NULL;
    }
    PyObject *keys = args[0];
    PyObject *prefix = args[1];
    Py_ssize_t limit = PyLong_AsSsize_t(args[2]);
    if (limit == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!PyBytes_CheckExact(prefix) || !(PyList_Check(keys) || PyTuple_Check(keys))) {
        PyErr_SetString(PyExc_TypeError, "check_keys takes a list or tuple and a bytes prefix");
        return NULL;
    }
    const char *pre = PyBytes_AS_STRING(prefix);
    const Py_ssize_t plen = PyBytes_GET_SIZE(prefix);
    PyObject *out = PyDict_New();
    if (out == NULL) {
        return NULL;
    }
    if (PySequence_Fast_GET_SIZE(keys) > 0 && any_bad_byte(pre, plen)) {
        goto slow;
    }
    /* The size is read again on every turn and each key held while in use: a list can
     * change under us only through a finalizer a garbage collection runs, but it may. */
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(keys); i++) {
        PyObject *key = Py_NewRef(PySequence_Fast_GET_ITEM(keys, i));
        const char *raw;
        Py_ssize_t rlen;
        if (PyUnicode_CheckExact(key)) {
#if PY_VERSION_HEX < 0x030C0000
            if (PyUnicode_READY(key) < 0) {
                Py_DECREF(key);
                Py_DECREF(out);
                return NULL;
            }
#endif
            if (!PyUnicode_IS_ASCII(key)) {
                Py_DECREF(key);
                goto slow;
            }
            raw = (const char *)PyUnicode_DATA(key);
            rlen = PyUnicode_GET_LENGTH(key);
        }
        else if (PyBytes_CheckExact(key)) {
            raw = PyBytes_AS_STRING(key);
            rlen = PyBytes_GET_SIZE(key);
        }
        else {
            Py_DECREF(key);
            goto slow;
        }
        if (rlen <= 0 || rlen > limit || any_bad_byte(raw, rlen)) {
            Py_DECREF(key);
            goto slow;
        }
        PyObject *full;
        if (plen == 0 && PyBytes_CheckExact(key)) {
            full = Py_NewRef(key);
        }
        else {
            full = PyBytes_FromStringAndSize(NULL, plen + rlen);
            if (full == NULL) {
                Py_DECREF(key);
                Py_DECREF(out);
                return NULL;
            }
            memcpy(PyBytes_AS_STRING(full), pre, (size_t)plen);
            memcpy(PyBytes_AS_STRING(full) + plen, raw, (size_t)rlen);
        }
        int ok = PyDict_SetItem(out, full, key);
        Py_DECREF(full);
        Py_DECREF(key);
        if (ok < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
slow:
    Py_DECREF(out);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ parse_meta_head
 *
 *   parse_meta_head(line, make) -> make(code, size, fields) | str
 *       The twin of pymc/meta.py's pure _parse_head: the return code of a meta reply line
 *       (``OK`` read as ``HD``), the data size of a ``VA`` line (else None) and the dict of
 *       the flags it knows, built by calling ``make(code, size, fields)``. A malformed line
 *       gives the message (a str) the pure code would poison the reader with; meta.py
 *       raises it through ``reader.fail``.
 *
 * Every read is within [0, len) of the line; numbers are at most 20 checked digits, read
 * into a uint64 with an overflow check (a 20-digit size or ``l`` beyond it is made by
 * PyLong_FromString from a bounded copy).
 */

/* The reply codes, made once (equal to, not the same objects as, what split() gives). */
static PyObject *code_VA, *code_HD, *code_EN, *code_NS, *code_EX, *code_NF, *code_MN;
/* The str key of each flag meta.py reads, by its byte; NULL for any other byte. */
static PyObject *flag_key[128];
static const char KNOWN_FLAGS[] = "cfsltWXZbOkh";

/* At most 20 checked digits as a uint64: 1 when it fits, 0 when it does not. */
static int
digits_u64(const char *p, Py_ssize_t n, uint64_t *out)
{
    uint64_t v = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t d = (uint64_t)(p[i] - '0');
        if (v > (UINT64_MAX - d) / 10) {
            return 0;
        }
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

/* int() of at most 20 checked digits, however large. */
static PyObject *
digits_long(const char *p, Py_ssize_t n)
{
    uint64_t v;
    if (digits_u64(p, n, &v)) {
        return PyLong_FromUnsignedLongLong((unsigned long long)v);
    }
    char copy[24];
    if (n > 20) { /* (the callers check; never reached) */
        PyErr_SetString(PyExc_ValueError, "parse_meta_head: a number of more than 20 digits");
        return NULL;
    }
    memcpy(copy, p, (size_t)n);
    copy[n] = '\0';
    return PyLong_FromString(copy, NULL, 10);
}

/* ``format`` filled with the flag byte (when not 0) and repr(line[:limit]); NULL when an
 * allocation fails. */
static PyObject *
head_error(const char *format, const char *s, Py_ssize_t n, Py_ssize_t limit, int flag)
{
    PyObject *head = PyBytes_FromStringAndSize(s, n < limit ? n : limit);
    if (head == NULL) {
        return NULL;
    }
    PyObject *msg = flag ? PyUnicode_FromFormat(format, flag, head)
                         : PyUnicode_FromFormat(format, head);
    Py_DECREF(head);
    return msg;
}

static int
b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '+') {
        return 62;
    }
    if (c == '/') {
        return 63;
    }
    return -1;
}

/* The key ``k`` of a ``b`` reply decoded, or NULL with no exception set when it is not
 * base64 as meta.py reads it: a length that is a multiple of 4, one or more alphabet bytes
 * then at most two '='. Bits past the last whole byte are ignored, as binascii does. */
static PyObject *
b64_key(const char *p, Py_ssize_t n, int *bad)
{
    *bad = 1;
    if (n == 0 || n % 4 != 0) {
        return NULL;
    }
    Py_ssize_t data = n;
    while (data > 0 && p[data - 1] == '=' && n - data < 2) {
        data--;
    }
    if (data == 0) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < data; i++) {
        if (b64_value((unsigned char)p[i]) < 0) {
            return NULL;
        }
    }
    *bad = 0;
    /* data >= n - 2 and n % 4 == 0: the last group has 2, 3 or 4 data bytes. */
    Py_ssize_t outlen = data / 4 * 3 + (data % 4 ? data % 4 - 1 : 0);
    PyObject *out = PyBytes_FromStringAndSize(NULL, outlen);
    if (out == NULL) {
        return NULL;
    }
    unsigned char *o = (unsigned char *)PyBytes_AS_STRING(out);
    Py_ssize_t w = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (Py_ssize_t i = 0; i < data; i++) {
        acc = (acc << 6) | (uint32_t)b64_value((unsigned char)p[i]);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (w < outlen) {
                o[w++] = (unsigned char)((acc >> bits) & 0xff);
            }
        }
    }
    return out;
}

/* The codes of a meta reply line, in the order of the code_* objects. */
enum { MC_VA, MC_HD, MC_EN, MC_NS, MC_EX, MC_NF, MC_MN };
/* Why a line is malformed (each is one message of meta.py's _parse_head). */
enum {
    HE_OK,
    HE_UNEXPECTED,   /* unexpected meta reply */
    HE_VA,           /* malformed VA line */
    HE_EMPTY_TOKEN,  /* malformed meta reply */
    HE_TWICE,        /* flag '%c' twice */
    HE_BAD_FLAG,     /* bad '%c' flag */
    HE_MN,           /* malformed MN line */
    HE_BASE64,       /* a base64 key that is not base64 */
    HE_EMPTY_KEY,    /* an empty key */
};
#define N_KNOWN 12 /* strlen(KNOWN_FLAGS) */

/* A parsed meta reply line: pointers into the line, every argument checked. */
typedef struct {
    int code;                  /* MC_* (OK is MC_HD) */
    const char *size;          /* VA: the size's digits (1 to 20) */
    Py_ssize_t size_len;
    unsigned int seen;         /* a bit per KNOWN_FLAGS index */
    int order[N_KNOWN];        /* the KNOWN_FLAGS indexes seen, in the line's order */
    int count;                 /* how many */
    const char *arg[N_KNOWN];  /* each flag's argument (after its letter), by index */
    Py_ssize_t arg_len[N_KNOWN];
    uint64_t num[N_KNOWN];     /* c f s l: the value, when num_fits; t: see t_value */
    unsigned int num_fits;     /* a bit per index: the number fit a uint64 */
    int64_t t_value;
} meta_head;

/* The KNOWN_FLAGS index of each flag byte (set by init_meta, for the known ones). */
static signed char flag_at[128];
#define FLAG_INDEX(f) (flag_at[(unsigned char)(f)])
/* The same, for the letters named in the code (KNOWN_FLAGS is "cfsltWXZbOkh"). */
enum { XC, XF, XS, XL, XT, XW, XX, XZ, XB, XO, XK, XH };

/* Whether p[0:n] is base64 as meta.py reads it (see b64_key). */
static int
b64_valid(const char *p, Py_ssize_t n)
{
    if (n == 0 || n % 4 != 0) {
        return 0;
    }
    Py_ssize_t data = n;
    while (data > 0 && p[data - 1] == '=' && n - data < 2) {
        data--;
    }
    if (data == 0) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < data; i++) {
        if (b64_value((unsigned char)p[i]) < 0) {
            return 0;
        }
    }
    return 1;
}

/* Parse the line s[0:n] into h: HE_OK, or why it is malformed (*flag: the flag byte the
 * message names). The checks run in _parse_head's order, so the first failure is its. */
static int
parse_head_core(const char *s, Py_ssize_t n, meta_head *h, int *flag)
{
    h->seen = 0;
    h->count = 0;
    h->num_fits = 0;
    h->t_value = 0;
    h->size = NULL;
    h->size_len = 0;
    *flag = 0;
    /* The first token: s[0:i]. */
    Py_ssize_t i = 0;
    while (i < n && s[i] != ' ') {
        i++;
    }
    if (i != 2) {
        return HE_UNEXPECTED;
    }
    const char a0 = s[0], a1 = s[1];
    if (a0 == 'V' && a1 == 'A') {
        /* VA <size>: the second token must be 1 to 20 digits. */
        if (i >= n) {
            return HE_VA;
        }
        const Py_ssize_t j = i + 1;
        Py_ssize_t k = j;
        while (k < n && s[k] != ' ') {
            k++;
        }
        if (!all_digits(s + j, k - j) || k - j > 20) {
            return HE_VA;
        }
        h->code = MC_VA;
        h->size = s + j;
        h->size_len = k - j;
        i = k;
    }
    else if (a0 == 'H' && a1 == 'D') {
        h->code = MC_HD;
    }
    else if (a0 == 'E' && a1 == 'N') {
        h->code = MC_EN;
    }
    else if (a0 == 'N' && a1 == 'S') {
        h->code = MC_NS;
    }
    else if (a0 == 'E' && a1 == 'X') {
        h->code = MC_EX;
    }
    else if (a0 == 'N' && a1 == 'F') {
        h->code = MC_NF;
    }
    else if (a0 == 'M' && a1 == 'N') {
        h->code = MC_MN;
    }
    else if (a0 == 'O' && a1 == 'K') { /* memcached 1.6.6 */
        h->code = MC_HD;
    }
    else {
        return HE_UNEXPECTED;
    }
    const int tokens = i < n; /* any token after the code (and size) */
    /* Each token after s[i] == ' ': s[p:q]. */
    while (i < n) {
        const Py_ssize_t p = i + 1;
        Py_ssize_t q = p;
        while (q < n && s[q] != ' ') {
            q++;
        }
        i = q;
        if (q == p) {
            return HE_EMPTY_TOKEN;
        }
        const unsigned char f = (unsigned char)s[p];
        if (f >= 128 || flag_key[f] == NULL) {
            continue; /* a flag a newer server added */
        }
        const int x = FLAG_INDEX(f);
        const unsigned int bit = 1u << x;
        *flag = f;
        if (h->seen & bit) {
            return HE_TWICE;
        }
        h->seen |= bit;
        h->order[h->count++] = x;
        const char *a = s + p + 1;
        const Py_ssize_t alen = q - p - 1;
        h->arg[x] = a;
        h->arg_len[x] = alen;
        switch (f) {
        case 'c':
        case 'f':
        case 's':
        case 'l': {
            uint64_t v = 0;
            if (!all_digits(a, alen) || alen > 20) {
                return HE_BAD_FLAG;
            }
            const int fits = digits_u64(a, alen, &v);
            if ((f == 'c' || f == 's') && !fits) {
                return HE_BAD_FLAG;
            }
            if (f == 'f' && (!fits || v >= ((uint64_t)1 << 32))) {
                return HE_BAD_FLAG;
            }
            h->num[x] = v;
            if (fits) {
                h->num_fits |= bit;
            }
            break;
        }
        case 'O':
        case 'k':
            break;
        case 'W':
        case 'X':
        case 'Z':
        case 'b':
            if (alen != 0) {
                return HE_BAD_FLAG;
            }
            break;
        case 't': {
            /* -?[0-9]{1,11}, and not below -1 */
            const int negative = alen > 0 && a[0] == '-';
            const char *d = a + negative;
            const Py_ssize_t dlen = alen - negative;
            if (!all_digits(d, dlen) || dlen > 11) {
                return HE_BAD_FLAG;
            }
            int64_t v = (int64_t)digits_value(d, dlen);
            if (negative) {
                v = -v;
            }
            if (v < -1) {
                return HE_BAD_FLAG;
            }
            h->t_value = v;
            break;
        }
        default: /* h */
            if (alen != 1 || (a[0] != '0' && a[0] != '1')) {
                return HE_BAD_FLAG;
            }
            break;
        }
    }
    *flag = 0;
    if (h->code == MC_MN && tokens) {
        return HE_MN;
    }
    const unsigned int kbit = 1u << XK;
    if (h->seen & kbit) {
        if (h->seen & (1u << XB)) {
            if (!b64_valid(h->arg[XK], h->arg_len[XK])) {
                return HE_BASE64;
            }
        }
        else if (h->arg_len[XK] == 0) {
            return HE_EMPTY_KEY;
        }
    }
    return HE_OK;
}

/* The message _parse_head poisons the reader with for a malformed line. */
static PyObject *
head_message(int why, int flag, const char *s, Py_ssize_t n)
{
    switch (why) {
    case HE_UNEXPECTED:
        return head_error("unexpected meta reply %R", s, n, 100, 0);
    case HE_VA:
        return head_error("malformed VA line %R", s, n, 300, 0);
    case HE_EMPTY_TOKEN:
        return head_error("malformed meta reply %R", s, n, 300, 0);
    case HE_TWICE:
        return head_error("flag '%c' twice in meta reply %R", s, n, 300, flag);
    case HE_BAD_FLAG:
        return head_error("bad '%c' flag in meta reply %R", s, n, 300, flag);
    case HE_MN:
        return head_error("malformed MN line %R", s, n, 100, 0);
    case HE_BASE64:
        return head_error("a base64 key that is not base64 in %R", s, n, 300, 0);
    default: /* HE_EMPTY_KEY */
        return head_error("an empty key in meta reply %R", s, n, 300, 0);
    }
}

/* The value meta.py keeps for flag index x of a parsed line (a new reference). */
static PyObject *
head_value(const meta_head *h, int x)
{
    const char f = KNOWN_FLAGS[x];
    const char *a = h->arg[x];
    const Py_ssize_t alen = h->arg_len[x];
    switch (f) {
    case 'c':
    case 'f':
    case 's':
    case 'l':
        return (h->num_fits & (1u << x)) ? PyLong_FromUnsignedLongLong(h->num[x])
                                          : digits_long(a, alen);
    case 'O':
        return PyBytes_FromStringAndSize(a, alen);
    case 'k':
        if (h->seen & (1u << XB)) {
            int bad;
            PyObject *decoded = b64_key(a, alen, &bad);
            if (decoded == NULL && bad) { /* (checked by parse_head_core: never) */
                PyErr_SetString(PyExc_ValueError, "parse_meta_head: a bad base64 key");
            }
            return decoded;
        }
        return PyBytes_FromStringAndSize(a, alen);
    case 'W':
    case 'X':
    case 'Z':
    case 'b':
        return Py_NewRef(Py_True);
    case 't':
        return PyLong_FromLongLong((long long)h->t_value);
    default: /* h */
        return Py_NewRef(a[0] == '1' ? Py_True : Py_False);
    }
}

static PyObject **const code_objects[] = {&code_VA, &code_HD, &code_EN, &code_NS,
                                          &code_EX, &code_NF, &code_MN};

static PyObject *
parse_meta_head(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "parse_meta_head takes 2 arguments");
        return NULL;
    }
    PyObject *lineobj = args[0];
    PyObject *make = args[1];
    if (!PyBytes_Check(lineobj)) {
        PyErr_SetString(PyExc_TypeError, "parse_meta_head takes a bytes line");
        return NULL;
    }
    const char *s = PyBytes_AS_STRING(lineobj);
    const Py_ssize_t n = PyBytes_GET_SIZE(lineobj);
    meta_head h;
    int flag;
    const int why = parse_head_core(s, n, &h, &flag);
    if (why != HE_OK) {
        return head_message(why, flag, s, n);
    }
    PyObject *size = h.size != NULL ? digits_long(h.size, h.size_len) : Py_NewRef(Py_None);
    if (size == NULL) {
        return NULL;
    }
    PyObject *fields = PyDict_New();
    if (fields == NULL) {
        Py_DECREF(size);
        return NULL;
    }
    for (int j = 0; j < h.count; j++) {
        const int x = h.order[j];
        PyObject *value = head_value(&h, x);
        if (value == NULL) {
            goto error;
        }
        int ok = PyDict_SetItem(fields, flag_key[(unsigned char)KNOWN_FLAGS[x]], value);
        Py_DECREF(value);
        if (ok < 0) {
            goto error;
        }
    }
    {
        PyObject *call[3] = {*code_objects[h.code], size, fields};
        PyObject *head = PyObject_Vectorcall(make, call, 3, NULL);
        Py_DECREF(size);
        Py_DECREF(fields);
        return head;
    }
error:
    Py_DECREF(size);
    Py_DECREF(fields);
    return NULL;
}

/* ------------------------------------------------------------------ the quiet meta pipeline
 *
 *   scan_meta_quiet(buf, pos, cap, opaques, last, sent, results, result_type)
 *       -> (pos, need, last, done)
 *       The common replies of a quiet meta pipeline (pymc/meta.py's ExpectMetaQuiet),
 *       from offset ``pos`` of the bytes ``buf``: each complete, well-formed reply whose
 *       opaque is ``opaques[n]`` (the requests' unique opaques, in the order sent) for an
 *       n after ``last``, and which its request (``sent[n]``: (command, expected key or
 *       None)) can get, goes into ``results`` as {opaques[n]: result_type(...)} (the
 *       MetaResult meta.py's _result makes). It stops at ``MN`` (consumed: done is
 *       True); or at a reply that is not whole yet where the pure reader would wait for
 *       it too (``need``: how many bytes from ``pos`` to wait for); or before the first
 *       reply it does not take (need 0, done False): an error line, a malformed or
 *       unmatched one, a block over ``cap``. meta.py reads that one with its pure code,
 *       which decides what it means (and poisons the reader with the message), then calls
 *       this again. So this block decides nothing of its own: it only takes the replies
 *       the pure code would take, makes of them what the pure code makes, and waits only
 *       where the pure code waits.
 *
 *   encode_meta_quiet(command, wires, flags, first, mask) -> (request, opaques) | None
 *       ``<command> <wire><flags> O<opaque> q\r\n`` for each wire, then ``mn\r\n``; the
 *       opaques are ``(first + i) & mask`` in lowercase hex. None when a wire is not a
 *       text key meta.py's _wire_key takes (meta.py then finds the error).
 */

enum { CMD_MG, CMD_MS, CMD_MD, CMD_MA, CMD_MN, N_CMD };
/* The status strings of meta.py's _STATUS, and which (command, code) pairs have one. */
static PyObject *st_hit, *st_miss, *st_stored, *st_deleted, *st_not_stored, *st_exists,
    *st_not_found, *st_noop;
static PyObject **status_of[N_CMD][7];

static int
command_id(PyObject *command)
{
    if (!PyBytes_CheckExact(command) || PyBytes_GET_SIZE(command) != 2) {
        return -1;
    }
    const char *c = PyBytes_AS_STRING(command);
    if (c[0] != 'm') {
        return -1;
    }
    switch (c[1]) {
    case 'g':
        return CMD_MG;
    case 's':
        return CMD_MS;
    case 'd':
        return CMD_MD;
    case 'a':
        return CMD_MA;
    case 'n':
        return CMD_MN;
    default:
        return -1;
    }
}

/* The MetaResult of a checked reply (see meta.py's _result); NULL with no exception set
 * when the pure code would refuse it, NULL with one on a failed allocation. */
static PyObject *
quiet_result(PyTypeObject *type, const meta_head *h, int cmd, PyObject *opaque, PyObject *key,
             const char *data, Py_ssize_t data_len)
{
    PyObject **status = status_of[cmd][h->code];
    if (status == NULL) {
        return NULL;
    }
    const int xk = XK;
    PyObject *got_key = NULL;
    if (h->seen & (1u << xk)) {
        got_key = head_value(h, xk);
        if (got_key == NULL) {
            return NULL;
        }
    }
    if (key != Py_None) {
        /* (a reply with an opaque is never bare: the key must match) */
        int same = got_key != NULL && PyBytes_CheckExact(key) &&
                   PyBytes_GET_SIZE(key) == PyBytes_GET_SIZE(got_key) &&
                   memcmp(PyBytes_AS_STRING(key), PyBytes_AS_STRING(got_key),
                          (size_t)PyBytes_GET_SIZE(key)) == 0;
        if (!same) {
            Py_XDECREF(got_key);
            return NULL;
        }
    }
    PyObject *number = NULL;
    if (cmd == CMD_MA && data != NULL) {
        uint64_t v;
        if (!all_digits(data, data_len) || data_len > 20 || !digits_u64(data, data_len, &v)) {
            Py_XDECREF(got_key);
            return NULL;
        }
        number = PyLong_FromUnsignedLongLong((unsigned long long)v);
        if (number == NULL) {
            Py_XDECREF(got_key);
            return NULL;
        }
    }
    const unsigned int seen = h->seen;
    const int xf = XF;
    if (data != NULL && data_len == 0 && cmd == CMD_MG) {
        /* _placeholder, for a request without N: no f (or f0), no X, and Z. */
        const int no_flags = !(seen & (1u << xf)) || h->num[xf] == 0;
        if (no_flags && !(seen & (1u << XX)) && (seen & (1u << XZ))) {
            status = &st_miss;
            data = NULL;
        }
    }
    PyObject *out = type->tp_alloc(type, 14);
    if (out == NULL) {
        Py_XDECREF(got_key);
        Py_XDECREF(number);
        return NULL;
    }
    PyObject *value = data != NULL ? PyBytes_FromStringAndSize(data, data_len) : Py_NewRef(Py_None);
    PyTuple_SET_ITEM(out, 0, Py_NewRef(*status));
    PyTuple_SET_ITEM(out, 1, value);
    static const char numeric[] = "ctfshl"; /* the fields 2 to 7, in MetaResult's order */
    int failed = value == NULL;
    for (int j = 0; j < 6; j++) {
        const int x = FLAG_INDEX(numeric[j]);
        PyObject *v = (seen & (1u << x)) ? head_value(h, x) : Py_NewRef(Py_None);
        failed |= v == NULL;
        PyTuple_SET_ITEM(out, 2 + j, v);
    }
    PyTuple_SET_ITEM(out, 8, PyBool_FromLong(seen & (1u << XW)));
    PyTuple_SET_ITEM(out, 9, PyBool_FromLong(seen & (1u << XX)));
    PyTuple_SET_ITEM(out, 10, PyBool_FromLong(seen & (1u << XZ)));
    PyTuple_SET_ITEM(out, 11, Py_NewRef(opaque));
    PyTuple_SET_ITEM(out, 12, got_key != NULL ? got_key : Py_NewRef(Py_None));
    PyTuple_SET_ITEM(out, 13, number != NULL ? number : Py_NewRef(Py_None));
    if (failed) { /* (every slot is set, a NULL one included: the tuple frees them) */
        Py_DECREF(out);
        if (!PyErr_Occurred()) {
            PyErr_NoMemory();
        }
        return NULL;
    }
    return out;
}

static PyObject *
scan_meta_quiet(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "scan_meta_quiet takes 8 arguments");
        return NULL;
    }
    PyObject *bufobj = args[0];
    PyObject *opaques = args[3];
    PyObject *sent = args[5];
    PyObject *results = args[6];
    PyObject *typeobj = args[7];
    if (!PyBytes_CheckExact(bufobj) || !PyList_CheckExact(opaques) || !PyList_CheckExact(sent) ||
        !PyDict_CheckExact(results) || !PyType_Check(typeobj) ||
        !PyType_IsSubtype((PyTypeObject *)typeobj, &PyTuple_Type) ||
        ((PyTypeObject *)typeobj)->tp_basicsize != PyTuple_Type.tp_basicsize ||
        ((PyTypeObject *)typeobj)->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_SetString(PyExc_TypeError,
                        "scan_meta_quiet takes bytes, int, int|None, list, int, list, dict, "
                        "a tuple type");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)typeobj;
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    if (pos == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t last = PyLong_AsSsize_t(args[4]);
    if (last == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int64_t cap = -1; /* none */
    if (args[2] != Py_None) {
        int overflow = 0;
        long long c = PyLong_AsLongLongAndOverflow(args[2], &overflow);
        if (c == -1 && PyErr_Occurred()) {
            return NULL;
        }
        if (overflow < 0 || (overflow == 0 && c < 0)) {
            PyErr_SetString(PyExc_ValueError, "scan_meta_quiet: negative cap");
            return NULL;
        }
        cap = overflow > 0 ? -1 : (int64_t)c;
    }
    const char *buf = PyBytes_AS_STRING(bufobj);
    const Py_ssize_t len = PyBytes_GET_SIZE(bufobj);
    if (pos < 0 || pos > len) {
        PyErr_SetString(PyExc_ValueError, "scan_meta_quiet: a position outside the buffer");
        return NULL;
    }
    int done = 0;
    Py_ssize_t need = 0;
    for (;;) {
        /* The line: up to the first CRLF, if it is at most MAX_LINE_LENGTH long. */
        Py_ssize_t end = -1;
        {
            Py_ssize_t stop = len - 2; /* the last offset a CRLF can start at */
            if (stop > pos + MAX_LINE_LENGTH) {
                stop = pos + MAX_LINE_LENGTH;
            }
            const char *p = buf + pos;
            while (p <= buf + stop) {
                const char *cr = memchr(p, '\r', (size_t)(buf + stop - p + 1));
                if (cr == NULL) {
                    break;
                }
                if (cr[1] == '\n') {
                    end = cr - buf;
                    break;
                }
                p = cr + 1;
            }
        }
        if (end < 0) {
            /* No whole line yet. The pure reader waits for one more byte, unless the
             * bytes held are already too long for a line (then it fails: left to it). */
            const Py_ssize_t pending = len - pos;
            if (pending - (pending > 0 && buf[len - 1] == '\r') <= MAX_LINE_LENGTH) {
                need = pending + 1;
            }
            break;
        }
        meta_head h;
        int flag;
        if (parse_head_core(buf + pos, end - pos, &h, &flag) != HE_OK) {
            break;
        }
        if (h.code == MC_MN) {
            pos = end + 2;
            done = 1;
            break;
        }
        /* A VA's block: complete, within the cap, followed by CRLF. */
        const char *data = NULL;
        Py_ssize_t data_len = 0;
        Py_ssize_t next = end + 2;
        if (h.code == MC_VA) {
            uint64_t size;
            if (!digits_u64(h.size, h.size_len, &size) || size > (uint64_t)INT64_MAX / 2 ||
                (cap >= 0 && size > (uint64_t)cap)) {
                break;
            }
            if ((int64_t)len - (int64_t)next < (int64_t)size + 2) {
                /* A well-formed head within the cap: the pure reader waits for the
                 * block too (and judges the reply once it is whole). */
                need = next + (Py_ssize_t)size + 2 - pos;
                break;
            }
            const Py_ssize_t stop = next + (Py_ssize_t)size;
            if (buf[stop] != '\r' || buf[stop + 1] != '\n') {
                break;
            }
            data = buf + next;
            data_len = (Py_ssize_t)size;
            next = stop + 2;
        }
        const int xo = XO;
        if (!(h.seen & (1u << xo))) {
            break;
        }
        /* Its request: the first one after ``last`` with its opaque (opaques are unique,
         * so this is the one index[opaque] names, if after last; ``last`` only grows, so
         * a pipeline's search is one pass over the list, and a reply not found stops). */
        const char *op = h.arg[xo];
        const Py_ssize_t op_len = h.arg_len[xo];
        const Py_ssize_t count = PyList_GET_SIZE(opaques);
        Py_ssize_t n = last + 1;
        for (; n < count; n++) {
            PyObject *o = PyList_GET_ITEM(opaques, n);
            if (PyBytes_CheckExact(o) && PyBytes_GET_SIZE(o) == op_len &&
                memcmp(PyBytes_AS_STRING(o), op, (size_t)op_len) == 0) {
                break;
            }
        }
        if (n >= count || n >= PyList_GET_SIZE(sent)) {
            break;
        }
        PyObject *opaque = Py_NewRef(PyList_GET_ITEM(opaques, n));
        PyObject *entry = PyList_GET_ITEM(sent, n);
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2) {
            Py_DECREF(opaque);
            break;
        }
        Py_INCREF(entry);
        const int cmd = command_id(PyTuple_GET_ITEM(entry, 0));
        PyObject *out = NULL;
        if (cmd >= 0) {
            out = quiet_result(type, &h, cmd, opaque, PyTuple_GET_ITEM(entry, 1), data, data_len);
        }
        Py_DECREF(entry);
        if (out == NULL) {
            Py_DECREF(opaque);
            if (PyErr_Occurred()) {
                return NULL;
            }
            break;
        }
        const int ok = PyDict_SetItem(results, opaque, out);
        Py_DECREF(out);
        Py_DECREF(opaque);
        if (ok < 0) {
            return NULL;
        }
        last = n;
        pos = next;
    }
    return Py_BuildValue("(nnnO)", pos, need, last, done ? Py_True : Py_False);
}

static PyObject *
encode_meta_quiet(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "encode_meta_quiet takes 5 arguments");
        return NULL;
    }
    PyObject *command = args[0];
    PyObject *wires = args[1];
    PyObject *flags = args[2];
    if (!PyBytes_CheckExact(command) || !PyList_CheckExact(wires) || !PyBytes_CheckExact(flags)) {
        PyErr_SetString(PyExc_TypeError, "encode_meta_quiet takes bytes, a list, bytes");
        return NULL;
    }
    const unsigned long long first = PyLong_AsUnsignedLongLong(args[3]);
    if (first == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    const unsigned long long mask = PyLong_AsUnsignedLongLong(args[4]);
    if (mask == (unsigned long long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    const Py_ssize_t count = PyList_GET_SIZE(wires);
    PyObject *opaques = PyList_New(count);
    if (opaques == NULL) {
        return NULL;
    }
    const Py_ssize_t clen = PyBytes_GET_SIZE(command);
    const Py_ssize_t flen = PyBytes_GET_SIZE(flags);
    /* <command> <wire><flags> O<opaque> q\r\n, and mn\r\n */
    Py_ssize_t total = 4;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *wire = PyList_GET_ITEM(wires, i);
        if (!PyBytes_CheckExact(wire) || PyBytes_GET_SIZE(wire) < 1 ||
            PyBytes_GET_SIZE(wire) > 250 ||
            any_bad_byte(PyBytes_AS_STRING(wire), PyBytes_GET_SIZE(wire))) {
            Py_DECREF(opaques);
            Py_RETURN_NONE;
        }
        char hex[16];
        unsigned long long v = (first + (unsigned long long)i) & mask;
        int hlen = 0;
        do { /* lowercase hex, from the last digit */
            hex[sizeof(hex) - 1 - hlen++] = "0123456789abcdef"[v & 15];
            v >>= 4;
        } while (v != 0);
        PyObject *opaque = PyBytes_FromStringAndSize(hex + sizeof(hex) - hlen, hlen);
        if (opaque == NULL) {
            Py_DECREF(opaques);
            return NULL;
        }
        PyList_SET_ITEM(opaques, i, opaque);
        total += clen + 1 + PyBytes_GET_SIZE(wire) + flen + 2 + hlen + 4;
    }
    PyObject *request = PyBytes_FromStringAndSize(NULL, total);
    if (request == NULL) {
        Py_DECREF(opaques);
        return NULL;
    }
    char *w = PyBytes_AS_STRING(request);
    for (Py_ssize_t i = 0; i < count; i++) {
        /* (the list may not have changed: nothing above ran Python code) */
        PyObject *wire = PyList_GET_ITEM(wires, i);
        PyObject *opaque = PyList_GET_ITEM(opaques, i);
        memcpy(w, PyBytes_AS_STRING(command), (size_t)clen);
        w += clen;
        *w++ = ' ';
        memcpy(w, PyBytes_AS_STRING(wire), (size_t)PyBytes_GET_SIZE(wire));
        w += PyBytes_GET_SIZE(wire);
        memcpy(w, PyBytes_AS_STRING(flags), (size_t)flen);
        w += flen;
        *w++ = ' ';
        *w++ = 'O';
        memcpy(w, PyBytes_AS_STRING(opaque), (size_t)PyBytes_GET_SIZE(opaque));
        w += PyBytes_GET_SIZE(opaque);
        memcpy(w, " q\r\n", 4);
        w += 4;
    }
    memcpy(w, "mn\r\n", 4);
    PyObject *out = PyTuple_Pack(2, request, opaques);
    Py_DECREF(request);
    Py_DECREF(opaques);
    return out;
}

static int
init_quiet(void)
{
    struct {
        PyObject **slot;
        const char *text;
    } strings[] = {
        {&st_hit, "hit"},           {&st_miss, "miss"},       {&st_stored, "stored"},
        {&st_deleted, "deleted"},   {&st_not_stored, "not_stored"},
        {&st_exists, "exists"},     {&st_not_found, "not_found"}, {&st_noop, "noop"},
    };
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        if (*strings[i].slot == NULL) {
            *strings[i].slot = PyUnicode_InternFromString(strings[i].text);
            if (*strings[i].slot == NULL) {
                return -1;
            }
        }
    }
    /* meta.py's _STATUS */
    status_of[CMD_MG][MC_VA] = &st_hit;
    status_of[CMD_MG][MC_HD] = &st_hit;
    status_of[CMD_MG][MC_EN] = &st_miss;
    status_of[CMD_MS][MC_HD] = &st_stored;
    status_of[CMD_MS][MC_NS] = &st_not_stored;
    status_of[CMD_MS][MC_EX] = &st_exists;
    status_of[CMD_MS][MC_NF] = &st_not_found;
    status_of[CMD_MD][MC_HD] = &st_deleted;
    status_of[CMD_MD][MC_EX] = &st_exists;
    status_of[CMD_MD][MC_NF] = &st_not_found;
    status_of[CMD_MA][MC_VA] = &st_hit;
    status_of[CMD_MA][MC_HD] = &st_hit;
    status_of[CMD_MA][MC_NS] = &st_not_stored;
    status_of[CMD_MA][MC_EX] = &st_exists;
    status_of[CMD_MA][MC_NF] = &st_not_found;
    status_of[CMD_MN][MC_MN] = &st_noop;
    return 0;
}

static int
init_meta(void)
{
    static const char *const codes[] = {"VA", "HD", "EN", "NS", "EX", "NF", "MN"};
    PyObject **slots[] = {&code_VA, &code_HD, &code_EN, &code_NS, &code_EX, &code_NF, &code_MN};
    for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
        if (*slots[i] == NULL) {
            *slots[i] = PyBytes_FromStringAndSize(codes[i], 2);
            if (*slots[i] == NULL) {
                return -1;
            }
        }
    }
    for (const char *f = KNOWN_FLAGS; *f; f++) {
        flag_at[(unsigned char)*f] = (signed char)(f - KNOWN_FLAGS);
        if (flag_key[(unsigned char)*f] == NULL) {
            flag_key[(unsigned char)*f] = PyUnicode_InternFromString((char[]){*f, '\0'});
            if (flag_key[(unsigned char)*f] == NULL) {
                return -1;
            }
        }
    }
    return 0;
}

/* ===================================================================================
 * exchange: one request/reply round trip with the GIL released once (pymc/client.py).
 *
 *   exchange(sock, request, started) -> bytes
 *       Send all of ``request`` on ``sock`` (a plain blocking stdlib socket whose timeouts
 *       are the kernel's, SO_SNDTIMEO/SO_RCVTIMEO: client.py passes no other), then one
 *       recv of up to EXCHANGE_RECV_SIZE bytes; returns what it read (b"" at EOF). Python's
 *       socket calls release the GIL once for the send and once more for the recv: under
 *       many threads every release is a hand-off of the GIL, and each op then waits for
 *       it twice. This waits once. client.py reads the rest of a reply that needs more.
 *
 * Errors are those of the socket's own send()/recv(): OSError from errno (so an expired
 * kernel timeout is BlockingIOError, EAGAIN, as there). EINTR: the GIL is taken back, the
 * signal handlers run (their exception propagates), and the exchange goes on. From then
 * on, as after a send() that took only part of the request, every wait is bounded by the
 * command's deadline, ``started`` (a time.monotonic() value taken before the call) plus
 * the socket's timeout (its SO_SNDTIMEO; 0: none), through poll() -- never select(), so
 * any descriptor works -- and TimeoutError(ETIMEDOUT) once it passes. The caller closes the
 * connection on any error: part of the request may be on the wire.
 * =================================================================================== */
#if defined(__linux__)
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>

/* Must match client.py's RECV_SIZE. */
#define EXCHANGE_RECV_SIZE 65536
/* exchange_io's own results besides 0 and errno values (all of which are positive). */
#define EXCHANGE_TIMED_OUT (-1)

static PyObject *str_fileno;
/* Each thread's recv buffer (malloc'd on its first exchange, freed when it exits): the
 * recv goes there and only the bytes read are copied into the result, where a bytes
 * object of EXCHANGE_RECV_SIZE made and shrunk per call costs a large malloc and a
 * realloc. Nothing runs between the recv and the copy, so a signal handler that makes an
 * exchange of its own on the same thread never finds the buffer in use. */
static pthread_key_t buffer_key;
static int buffer_key_made;

static char *
thread_buffer(void)
{
    char *buffer = pthread_getspecific(buffer_key);
    if (buffer == NULL) {
        buffer = malloc(EXCHANGE_RECV_SIZE);
        if (buffer == NULL || pthread_setspecific(buffer_key, buffer) != 0) {
            free(buffer);
            PyErr_NoMemory();
            return NULL;
        }
    }
    return buffer;
}

typedef struct {
    int fd;
    const char *request;
    Py_ssize_t length;
    Py_ssize_t sent;
    char *buffer;
    Py_ssize_t got;
    double started;
    int timed;         /* waits are bounded by the deadline: poll() before each call */
    int deadline_set;  /* deadline (and forever) below are known */
    int forever;       /* the socket has no timeout: no deadline */
    double deadline;
} exchange_state;

static double
monotonic_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic()'s clock on Linux */
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Wait (GIL released) until fd is ready for ``events`` or the deadline passes: 0 when it
 * may be ready, EXCHANGE_TIMED_OUT, or an errno value (EINTR among them). */
static int
exchange_wait(exchange_state *st, short events)
{
    if (!st->deadline_set) {
        struct timeval tv = {0, 0};
        socklen_t size = sizeof(tv);
        if (getsockopt(st->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, &size) < 0) {
            return errno;
        }
        st->forever = tv.tv_sec == 0 && tv.tv_usec == 0;
        st->deadline = st->started + (double)tv.tv_sec + (double)tv.tv_usec * 1e-6;
        st->deadline_set = 1;
    }
    int wait_ms = -1;
    if (!st->forever) {
        double left = st->deadline - monotonic_now();
        if (left <= 0) {
            return EXCHANGE_TIMED_OUT;
        }
        double ms = ceil(left * 1000.0);
        wait_ms = ms > 2147483647.0 ? 2147483647 : (int)ms;
    }
    struct pollfd p = {st->fd, events, 0};
    int ready = poll(&p, 1, wait_ms);
    if (ready < 0) {
        return errno;
    }
    if (ready == 0) {
        return EXCHANGE_TIMED_OUT;
    }
    return 0; /* (POLLERR/POLLHUP/POLLNVAL too: the call itself then says what is wrong) */
}

/* The I/O, GIL released: send the rest of the request, then one recv. 0 when st->got
 * holds what the recv returned, else EXCHANGE_TIMED_OUT or an errno value. */
static int
exchange_io(exchange_state *st)
{
    while (st->sent < st->length) {
        if (st->timed) {
            int waited = exchange_wait(st, POLLOUT);
            if (waited != 0) {
                return waited;
            }
        }
        ssize_t n = send(st->fd, st->request + st->sent, (size_t)(st->length - st->sent),
                         st->timed ? MSG_DONTWAIT : 0);
        if (n < 0) {
            if (st->timed && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                continue; /* (poll said ready, the send found no room: wait again) */
            }
            return errno;
        }
        st->sent += n;
        if (st->sent < st->length) {
            st->timed = 1; /* the rest, and the reply, by the deadline */
        }
    }
    for (;;) {
        if (st->timed) {
            int waited = exchange_wait(st, POLLIN);
            if (waited != 0) {
                return waited;
            }
        }
        ssize_t n = recv(st->fd, st->buffer, EXCHANGE_RECV_SIZE, st->timed ? MSG_DONTWAIT : 0);
        if (n < 0) {
            if (st->timed && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                continue;
            }
            return errno;
        }
        st->got = n;
        return 0;
    }
}

static PyObject *
exchange(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "exchange(sock, request, started) takes 3 arguments");
        return NULL;
    }
    PyObject *request = args[1];
    if (!PyBytes_CheckExact(request)) {
        PyErr_SetString(PyExc_TypeError, "exchange: the request must be bytes");
        return NULL;
    }
    double started = PyFloat_AsDouble(args[2]);
    if (started == -1.0 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *number = PyObject_VectorcallMethod(str_fileno, args, 1, NULL);
    if (number == NULL) {
        return NULL;
    }
    long fd = PyLong_AsLong(number);
    Py_DECREF(number);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (fd < 0 || fd > INT_MAX) { /* a closed socket: what its own send() says */
        errno = EBADF;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    char *buffer = thread_buffer();
    if (buffer == NULL) {
        return NULL;
    }
    exchange_state st = {0};
    st.fd = (int)fd;
    st.request = PyBytes_AS_STRING(request); /* (the caller holds request alive) */
    st.length = PyBytes_GET_SIZE(request);
    st.buffer = buffer;
    st.started = started;
    for (;;) {
        int failed;
        Py_BEGIN_ALLOW_THREADS
        failed = exchange_io(&st);
        Py_END_ALLOW_THREADS
        if (failed == 0) {
            break;
        }
        if (failed == EINTR) {
            if (PyErr_CheckSignals() < 0) {
                return NULL;
            }
            st.timed = 1; /* the waits that follow are bounded by the deadline */
            continue;
        }
        if (failed == EXCHANGE_TIMED_OUT) {
            PyObject *value = Py_BuildValue("(is)", ETIMEDOUT, "timed out");
            if (value != NULL) {
                PyErr_SetObject(PyExc_TimeoutError, value);
                Py_DECREF(value);
            }
            return NULL;
        }
        errno = failed;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyBytes_FromStringAndSize(buffer, st.got);
}

static int
init_exchange(void)
{
    if (!buffer_key_made) {
        if (pthread_key_create(&buffer_key, free) != 0) {
            PyErr_NoMemory();
            return -1;
        }
        buffer_key_made = 1;
    }
    if (str_fileno == NULL) {
        str_fileno = PyUnicode_InternFromString("fileno");
    }
    return str_fileno == NULL ? -1 : 0;
}
#endif /* __linux__: exchange */
/* ================================================================= end of exchange */
/* ---------------------------------------------------------------------- cluster fan-out
 *
 * Two per-key loops of a HashClient multi-get (pymc/cluster.py and pymc/client.py hold
 * the pure-Python references, place_keys_py and merge_values_py; tests/unit/protocol/test_speedups_fanout.py
 * checks that the two agree). No state, no I/O.
 *
 *   place_keys(checked, cache) -> (placed, unseen)
 *       checked: {raw: key}; cache: {key: node name} (a NodeSet's placement cache).
 *       placed: {name: {raw: key}} for the keys the cache knows (a value of None is not
 *       known); unseen: {key: raw} for the others, or None when there are none.
 *
 *   merge_values(parts, wanted) -> dict
 *       parts: a list of {raw: (flags, data, cas)} (each node's items); wanted: {raw: key}.
 *       {wanted[raw]: data} over all the parts, in order (KeyError for a raw wanted does not
 *       hold; TypeError for an item that is no tuple of at least two).
 */

static PyObject *
place_keys(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyDict_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "place_keys(checked: dict, cache: dict)");
        return NULL;
    }
    PyObject *checked = args[0], *cache = args[1];
    PyObject *placed = PyDict_New();
    PyObject *unseen = NULL;
    if (placed == NULL) {
        return NULL;
    }
    PyObject *raw, *key;
    Py_ssize_t pos = 0;
    while (PyDict_Next(checked, &pos, &raw, &key)) {
        /* Strong references: a key's own __eq__ (a str subclass) could run any code. */
        Py_INCREF(raw);
        Py_INCREF(key);
        PyObject *name = PyDict_GetItemWithError(cache, key); /* borrowed */
        int failed = 0;
        if (name == NULL && PyErr_Occurred()) {
            failed = 1;
        }
        else if (name == NULL || name == Py_None) {
            if (unseen == NULL && (unseen = PyDict_New()) == NULL) {
                failed = 1;
            }
            else if (PyDict_SetItem(unseen, key, raw) < 0) {
                failed = 1;
            }
        }
        else {
            Py_INCREF(name);
            PyObject *group = PyDict_GetItemWithError(placed, name); /* borrowed */
            if (group == NULL) {
                if (PyErr_Occurred() || (group = PyDict_New()) == NULL) {
                    failed = 1;
                }
                else {
                    int err = PyDict_SetItem(placed, name, group);
                    Py_DECREF(group); /* placed holds it now (or it is gone: failed) */
                    if (err < 0) {
                        failed = 1;
                    }
                }
            }
            if (!failed && PyDict_SetItem(group, raw, key) < 0) {
                failed = 1;
            }
            Py_DECREF(name);
        }
        Py_DECREF(raw);
        Py_DECREF(key);
        if (failed) {
            Py_DECREF(placed);
            Py_XDECREF(unseen);
            return NULL;
        }
    }
    PyObject *result = PyTuple_Pack(2, placed, unseen == NULL ? Py_None : unseen);
    Py_DECREF(placed);
    Py_XDECREF(unseen);
    return result;
}

static PyObject *
merge_values(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[0]) || !PyDict_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "merge_values(parts: list, wanted: dict)");
        return NULL;
    }
    PyObject *parts = args[0], *wanted = args[1];
    PyObject *out = PyDict_New();
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(parts); i++) {
        PyObject *part = PyList_GET_ITEM(parts, i); /* borrowed: held below */
        if (!PyDict_Check(part)) {
            PyErr_SetString(PyExc_TypeError, "merge_values: a part is not a dict");
            Py_DECREF(out);
            return NULL;
        }
        Py_INCREF(part);
        PyObject *raw, *item;
        Py_ssize_t pos = 0;
        int failed = 0;
        while (!failed && PyDict_Next(part, &pos, &raw, &item)) {
            if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) < 2) {
                PyErr_SetString(PyExc_TypeError, "merge_values: an item is not a tuple");
                failed = 1;
                break;
            }
            Py_INCREF(raw);
            Py_INCREF(item);
            PyObject *key = PyDict_GetItemWithError(wanted, raw); /* borrowed */
            if (key == NULL) {
                if (!PyErr_Occurred()) {
                    PyErr_SetObject(PyExc_KeyError, raw);
                }
                failed = 1;
            }
            else {
                Py_INCREF(key);
                if (PyDict_SetItem(out, key, PyTuple_GET_ITEM(item, 1)) < 0) {
                    failed = 1;
                }
                Py_DECREF(key);
            }
            Py_DECREF(raw);
            Py_DECREF(item);
        }
        Py_DECREF(part);
        if (failed) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

/* ------------------------------------------------------------ end of the cluster fan-out */

static PyMethodDef methods[] = {
    {"scan_values", (PyCFunction)(void (*)(void))scan_values, METH_FASTCALL,
     "scan_values(buf, pos, cap, wanted, found) -> (code, a, b): the value loop of "
     "pymc.protocol.Reader.read_values."},
    {"check_keys", (PyCFunction)(void (*)(void))check_keys, METH_FASTCALL,
     "check_keys(keys, prefix, limit) -> dict | None: the fast path of "
     "pymc.protocol.validate_keys."},
    {"parse_meta_head", (PyCFunction)(void (*)(void))parse_meta_head, METH_FASTCALL,
     "parse_meta_head(line, make) -> make(code, size, fields) | str: pymc.meta's "
     "_parse_head; a str is the message of a malformed line."},
#if defined(__linux__)
    {"exchange", (PyCFunction)(void (*)(void))exchange, METH_FASTCALL,
     "exchange(sock, request, started) -> bytes: send the request, then one recv, with "
     "the GIL released once (pymc.client's round trip on a plain socket)."},
#endif
    {"place_keys", (PyCFunction)(void (*)(void))place_keys, METH_FASTCALL,
     "place_keys(checked, cache) -> (placed, unseen): pymc.cluster's place_keys_py."},
    {"merge_values", (PyCFunction)(void (*)(void))merge_values, METH_FASTCALL,
     "merge_values(parts, wanted) -> dict: pymc.client's merge_values_py."},
    {"scan_meta_quiet", (PyCFunction)(void (*)(void))scan_meta_quiet, METH_FASTCALL,
     "scan_meta_quiet(buf, pos, cap, opaques, last, sent, results, result_type) -> (pos, need, "
     "last, done): the common replies of pymc.meta.ExpectMetaQuiet."},
    {"encode_meta_quiet", (PyCFunction)(void (*)(void))encode_meta_quiet, METH_FASTCALL,
     "encode_meta_quiet(command, wires, flags, first, mask) -> (request, opaques) | None: "
     "pymc.meta's quiet pipeline of text keys."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "pymc.protocol.speedups",
    "Compiled twins of pymc.protocol's value loop and key check; protocol.py is the "
    "reference.",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit_speedups(void)
{
    if (init_meta() < 0 || init_quiet() < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module_def);
    if (m == NULL) {
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MAX_LINE_LENGTH", MAX_LINE_LENGTH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#if defined(__linux__)
    if (init_exchange() < 0
        || PyModule_AddIntConstant(m, "EXCHANGE_RECV_SIZE", EXCHANGE_RECV_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    return m;
}
