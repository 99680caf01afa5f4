/*
 * pymc.speedups: the compiled twins of two hot loops of pymc/protocol.py and of the meta
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

    /* The first token: s[0:i]. */
    Py_ssize_t i = 0;
    while (i < n && s[i] != ' ') {
        i++;
    }
    PyObject *code;
    PyObject *size = NULL;
    if (i == 2 && s[0] == 'V' && s[1] == 'A') {
        /* VA <size>: the second token must be 1 to 20 digits. */
        if (i >= n) {
            return head_error("malformed VA line %R", s, n, 300, 0);
        }
        const Py_ssize_t j = i + 1;
        Py_ssize_t k = j;
        while (k < n && s[k] != ' ') {
            k++;
        }
        if (!all_digits(s + j, k - j) || k - j > 20) {
            return head_error("malformed VA line %R", s, n, 300, 0);
        }
        size = digits_long(s + j, k - j);
        if (size == NULL) {
            return NULL;
        }
        code = code_VA;
        i = k;
    }
    else if (i == 2 && s[0] == 'H' && s[1] == 'D') {
        code = code_HD;
    }
    else if (i == 2 && s[0] == 'E' && s[1] == 'N') {
        code = code_EN;
    }
    else if (i == 2 && s[0] == 'N' && s[1] == 'S') {
        code = code_NS;
    }
    else if (i == 2 && s[0] == 'E' && s[1] == 'X') {
        code = code_EX;
    }
    else if (i == 2 && s[0] == 'N' && s[1] == 'F') {
        code = code_NF;
    }
    else if (i == 2 && s[0] == 'M' && s[1] == 'N') {
        code = code_MN;
    }
    else if (i == 2 && s[0] == 'O' && s[1] == 'K') { /* memcached 1.6.6 */
        code = code_HD;
    }
    else {
        return head_error("unexpected meta reply %R", s, n, 100, 0);
    }
    if (size == NULL) {
        size = Py_NewRef(Py_None);
    }
    PyObject *fields = PyDict_New();
    if (fields == NULL) {
        Py_DECREF(size);
        return NULL;
    }
    PyObject *msg = NULL; /* the failure, when the line is malformed */
    unsigned int seen = 0;  /* a bit per KNOWN_FLAGS index */
    const int tokens = i < n; /* any token after the code (and size) */
    const char *key = NULL;   /* the k flag's argument, and its length */
    Py_ssize_t key_len = 0;
    /* Each token after s[i] == ' ': s[p:q]. */
    while (i < n) {
        const Py_ssize_t p = i + 1;
        Py_ssize_t q = p;
        while (q < n && s[q] != ' ') {
            q++;
        }
        i = q;
        if (q == p) {
            msg = head_error("malformed meta reply %R", s, n, 300, 0);
            goto out;
        }
        const unsigned char f = (unsigned char)s[p];
        if (f >= 128 || flag_key[f] == NULL) {
            continue; /* a flag a newer server added */
        }
        const unsigned int bit = 1u << (strchr(KNOWN_FLAGS, f) - KNOWN_FLAGS);
        if (seen & bit) {
            msg = head_error("flag '%c' twice in meta reply %R", s, n, 300, f);
            goto out;
        }
        seen |= bit;
        const char *a = s + p + 1;
        const Py_ssize_t alen = q - p - 1;
        PyObject *value;
        switch (f) {
        case 'c':
        case 'f':
        case 's':
        case 'l': {
            uint64_t v;
            if (!all_digits(a, alen) || alen > 20) {
                goto bad_flag;
            }
            int fits = digits_u64(a, alen, &v);
            if ((f == 'c' || f == 's') && !fits) {
                goto bad_flag;
            }
            if (f == 'f' && (!fits || v >= ((uint64_t)1 << 32))) {
                goto bad_flag;
            }
            value = fits ? PyLong_FromUnsignedLongLong((unsigned long long)v)
                         : digits_long(a, alen);
            break;
        }
        case 'O':
        case 'k':
            if (f == 'k') {
                key = a;
                key_len = alen;
            }
            value = PyBytes_FromStringAndSize(a, alen);
            break;
        case 'W':
        case 'X':
        case 'Z':
        case 'b':
            if (alen != 0) {
                goto bad_flag;
            }
            value = Py_NewRef(Py_True);
            break;
        case 't': {
            /* -?[0-9]{1,11}, and not below -1 */
            const int negative = alen > 0 && a[0] == '-';
            const char *d = a + negative;
            const Py_ssize_t dlen = alen - negative;
            if (!all_digits(d, dlen) || dlen > 11) {
                goto bad_flag;
            }
            int64_t v = (int64_t)digits_value(d, dlen);
            if (negative) {
                v = -v;
            }
            if (v < -1) {
                goto bad_flag;
            }
            value = PyLong_FromLongLong((long long)v);
            break;
        }
        default: /* h */
            if (alen != 1 || (a[0] != '0' && a[0] != '1')) {
                goto bad_flag;
            }
            value = Py_NewRef(a[0] == '1' ? Py_True : Py_False);
            break;
        }
        if (value == NULL) {
            goto error;
        }
        int ok = PyDict_SetItem(fields, flag_key[f], value);
        Py_DECREF(value);
        if (ok < 0) {
            goto error;
        }
        continue;
    bad_flag:
        msg = head_error("bad '%c' flag in meta reply %R", s, n, 300, f);
        goto out;
    }
    if (code == code_MN && tokens) {
        msg = head_error("malformed MN line %R", s, n, 100, 0);
        goto out;
    }
    if (key != NULL) {
        if (seen & (1u << (strchr(KNOWN_FLAGS, 'b') - KNOWN_FLAGS))) {
            int bad;
            PyObject *decoded = b64_key(key, key_len, &bad);
            if (decoded == NULL) {
                if (!bad) {
                    goto error;
                }
                msg = head_error("a base64 key that is not base64 in %R", s, n, 300, 0);
                goto out;
            }
            int ok = PyDict_SetItem(fields, flag_key['k'], decoded);
            Py_DECREF(decoded);
            if (ok < 0) {
                goto error;
            }
        }
        else if (key_len == 0) {
            msg = head_error("an empty key in meta reply %R", s, n, 300, 0);
            goto out;
        }
    }
    {
        PyObject *call[3] = {code, size, fields};
        PyObject *head = PyObject_Vectorcall(make, call, 3, NULL);
        Py_DECREF(size);
        Py_DECREF(fields);
        return head;
    }
out: /* malformed: msg is the message, or NULL after a failed allocation */
    Py_DECREF(size);
    Py_DECREF(fields);
    return msg;
error:
    Py_DECREF(size);
    Py_DECREF(fields);
    return NULL;
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
        if (flag_key[(unsigned char)*f] == NULL) {
            flag_key[(unsigned char)*f] = PyUnicode_InternFromString((char[]){*f, '\0'});
            if (flag_key[(unsigned char)*f] == NULL) {
                return -1;
            }
        }
    }
    return 0;
}

/* ============================================================================ * exchange: one request/reply round trip with the GIL released once (pymc/client.py).
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
=======
/* ---------------------------------------------------------------------- cluster fan-out
 *
 * Two per-key loops of a HashClient multi-get (pymc/cluster.py and pymc/client.py hold
 * the pure-Python references, place_keys_py and merge_values_py; tests/test_speedups_fanout.py
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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "pymc.speedups",
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
    if (init_meta() < 0) {
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
