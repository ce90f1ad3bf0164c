/* The plain batch codec: record batches of plain data between TaskManagers, in C.
 *
 * An optional accelerator for streamjob_runtime.taskmanager.wire (built by hatch_build.py
 * when a C compiler is at hand).  A record is plain when it is an exact int (64-bit),
 * float, str, bytes, bool, None, or an exact tuple of plain values (nested up to
 * MAX_DEPTH); a batch is plain when every record and timestamp is.  Decoding gives
 * records equal to the encoded ones and of the same exact types, as pickle does; the
 * format is in wire.py, whose Python decoder reads the same bytes.
 *
 *   encode(values, timestamps) -> bytes, or None when the batch is not plain
 *   decode(buffer, start) -> (values, timestamps or None); ValueError when corrupt
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Bumped with every change of the format: wire ignores a build of another version. */
#define PLAINBATCH_VERSION 1
#define MAX_DEPTH 32

enum { T_INT = 1, T_FLOAT = 2, T_STR = 3, T_BYTES = 4, T_NONE = 5, T_TRUE = 6, T_FALSE = 7,
       T_TUPLE = 8 };

typedef struct {
    char *data;
    size_t len, cap;
} Buffer;

static int reserve(Buffer *b, size_t more) {
    if (b->len + more <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more) cap *= 2;
    char *p = PyMem_Realloc(b->data, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = p;
    b->cap = cap;
    return 0;
}

/* Writes v as a varint; the caller has reserved 10 bytes. */
static inline void write_varint(Buffer *b, uint64_t v) {
    while (v >= 0x80) {
        b->data[b->len++] = (char)(v | 0x80);
        v >>= 7;
    }
    b->data[b->len++] = (char)v;
}

static inline int put_varint(Buffer *b, uint64_t v) {
    if (reserve(b, 10) < 0) return -1;
    write_varint(b, v);
    return 0;
}

/* An exact int's value into *out: 1, or 0 when it needs more than 64 bits. */
static inline int int_value(PyObject *v, long long *out) {
#if PY_VERSION_HEX < 0x030C0000
    /* CPython 3.11 keeps an int's digit count with its sign in ob_size: one digit is
       the common case, read without a call. */
    Py_ssize_t size = Py_SIZE(v);
    if (size == 0 || size == 1 || size == -1) {
        long long digit = size ? (long long)((PyLongObject *)v)->ob_digit[0] : 0;
        *out = size < 0 ? -digit : digit;
        return 1;
    }
#endif
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(v, &overflow);
    return !overflow;
}

static inline uint64_t zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
static inline int64_t unzigzag(uint64_t v) { return (int64_t)(v >> 1) ^ -(int64_t)(v & 1); }

static int put_bytes(Buffer *b, const char *p, Py_ssize_t n) {
    if (put_varint(b, (uint64_t)n) < 0 || reserve(b, (size_t)n) < 0) return -1;
    memcpy(b->data + b->len, p, (size_t)n);
    b->len += (size_t)n;
    return 0;
}

/* 1 written, 0 not plain (nothing to report), -1 error set. */
static int put_value(Buffer *b, PyObject *v, int depth) {
    PyTypeObject *t = Py_TYPE(v);
    if (t == &PyLong_Type) {
        long long x;
        if (!int_value(v, &x)) return 0;
        if (reserve(b, 11) < 0) return -1;
        b->data[b->len++] = T_INT;
        write_varint(b, zigzag(x));
        return 1;
    }
    if (t == &PyTuple_Type) {
        if (depth >= MAX_DEPTH) return 0;
        Py_ssize_t n = PyTuple_GET_SIZE(v);
        if (reserve(b, 11) < 0) return -1;
        b->data[b->len++] = T_TUPLE;
        write_varint(b, (uint64_t)n);
        for (Py_ssize_t i = 0; i < n; i++) {
            int r = put_value(b, PyTuple_GET_ITEM(v, i), depth + 1);
            if (r <= 0) return r;
        }
        return 1;
    }
    if (t == &PyUnicode_Type) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (s == NULL) { /* lone surrogates: not UTF-8, pickle carries them */
            PyErr_Clear();
            return 0;
        }
        if (reserve(b, 1) < 0) return -1;
        b->data[b->len++] = T_STR;
        return put_bytes(b, s, n) < 0 ? -1 : 1;
    }
    if (t == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(v);
        uint64_t bits;
        memcpy(&bits, &d, 8);
        if (reserve(b, 9) < 0) return -1;
        b->data[b->len++] = T_FLOAT;
        for (int i = 0; i < 8; i++) b->data[b->len++] = (char)(bits >> (8 * i));
        return 1;
    }
    if (t == &PyBytes_Type) {
        if (reserve(b, 1) < 0) return -1;
        b->data[b->len++] = T_BYTES;
        return put_bytes(b, PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v)) < 0 ? -1 : 1;
    }
    if (v == Py_None || v == Py_True || v == Py_False) {
        if (reserve(b, 1) < 0) return -1;
        b->data[b->len++] = v == Py_None ? T_NONE : v == Py_True ? T_TRUE : T_FALSE;
        return 1;
    }
    return 0;
}

static PyObject *plainbatch_encode(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 2 || !PyList_CheckExact(args[0]) ||
        (args[1] != Py_None && !PyList_CheckExact(args[1]))) {
        PyErr_SetString(PyExc_TypeError, "encode(values: list, timestamps: list | None)");
        return NULL;
    }
    PyObject *values = args[0], *timestamps = args[1];
    Py_ssize_t n = PyList_GET_SIZE(values);
    if (timestamps != Py_None && PyList_GET_SIZE(timestamps) != n) Py_RETURN_NONE;
    Buffer b = {NULL, 0, 0};
    int r = 1;
    if (reserve(&b, 16 + 8 * (size_t)n) < 0) goto error; /* (int, int) records fit */
    if (put_varint(&b, (uint64_t)n) < 0 || reserve(&b, 1) < 0) goto error;
    b.data[b.len++] = timestamps == Py_None ? 0 : 1;
    if (timestamps != Py_None) {
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *ts = PyList_GET_ITEM(timestamps, i);
            long long x;
            if (Py_TYPE(ts) != &PyLong_Type || !int_value(ts, &x)) goto not_plain;
            if (put_varint(&b, zigzag(x)) < 0) goto error;
        }
    }
    /* No user code runs while encoding: the list cannot change under us. */
    for (Py_ssize_t i = 0; i < n && r > 0; i++) r = put_value(&b, PyList_GET_ITEM(values, i), 0);
    if (r < 0) goto error;
    if (r == 0) goto not_plain;
    PyObject *out = PyBytes_FromStringAndSize(b.data, (Py_ssize_t)b.len);
    PyMem_Free(b.data);
    return out;
not_plain:
    PyMem_Free(b.data);
    Py_RETURN_NONE;
error:
    PyMem_Free(b.data);
    return NULL;
}

typedef struct {
    const unsigned char *p, *end;
} Reader;

static PyObject *corrupt(const char *why) {
    PyErr_Format(PyExc_ValueError, "corrupt plain batch: %s", why);
    return NULL;
}

static inline int get_varint(Reader *r, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) return -1;
        unsigned char c = *r->p++;
        v |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

static PyObject *get_value(Reader *r, int depth) {
    if (r->p >= r->end) return corrupt("truncated");
    unsigned char tag = *r->p++;
    uint64_t u;
    switch (tag) {
    case T_INT:
        if (get_varint(r, &u) < 0) return corrupt("bad int");
        return PyLong_FromLongLong(unzigzag(u));
    case T_TUPLE: {
        if (depth >= MAX_DEPTH) return corrupt("nested too deep");
        if (get_varint(r, &u) < 0 || u > (uint64_t)(r->end - r->p)) return corrupt("bad tuple");
        PyObject *tuple = PyTuple_New((Py_ssize_t)u);
        if (tuple == NULL) return NULL;
        for (Py_ssize_t i = 0; i < (Py_ssize_t)u; i++) {
            PyObject *item = get_value(r, depth + 1);
            if (item == NULL) {
                Py_DECREF(tuple);
                return NULL;
            }
            PyTuple_SET_ITEM(tuple, i, item);
        }
        return tuple;
    }
    case T_STR:
    case T_BYTES: {
        if (get_varint(r, &u) < 0 || u > (uint64_t)(r->end - r->p)) return corrupt("bad length");
        const char *s = (const char *)r->p;
        r->p += u;
        return tag == T_STR ? PyUnicode_DecodeUTF8(s, (Py_ssize_t)u, "strict")
                            : PyBytes_FromStringAndSize(s, (Py_ssize_t)u);
    }
    case T_FLOAT: {
        if (r->end - r->p < 8) return corrupt("bad float");
        uint64_t bits = 0;
        for (int i = 0; i < 8; i++) bits |= (uint64_t)r->p[i] << (8 * i);
        r->p += 8;
        double d;
        memcpy(&d, &bits, 8);
        return PyFloat_FromDouble(d);
    }
    case T_NONE:
        Py_RETURN_NONE;
    case T_TRUE:
        Py_RETURN_TRUE;
    case T_FALSE:
        Py_RETURN_FALSE;
    default:
        return corrupt("unknown value tag");
    }
}

static PyObject *plainbatch_decode(PyObject *module, PyObject *args) {
    (void)module;
    Py_buffer view;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "y*n", &view, &start)) return NULL;
    PyObject *values = NULL, *timestamps = NULL, *result = NULL;
    if (start < 0 || start > view.len) {
        corrupt("start outside the buffer");
        goto done;
    }
    Reader r = {(const unsigned char *)view.buf + start, (const unsigned char *)view.buf + view.len};
    uint64_t n;
    /* Every record takes at least one byte: a count beyond that is corrupt, not huge. */
    if (get_varint(&r, &n) < 0 || r.p >= r.end || n > (uint64_t)(r.end - r.p)) {
        corrupt("bad count");
        goto done;
    }
    unsigned char flags = *r.p++;
    if (flags > 1) {
        corrupt("unknown flags");
        goto done;
    }
    if (flags) {
        timestamps = PyList_New((Py_ssize_t)n);
        if (timestamps == NULL) goto done;
        for (Py_ssize_t i = 0; i < (Py_ssize_t)n; i++) {
            uint64_t u;
            if (get_varint(&r, &u) < 0) {
                corrupt("bad timestamp");
                goto done;
            }
            PyObject *ts = PyLong_FromLongLong(unzigzag(u));
            if (ts == NULL) goto done;
            PyList_SET_ITEM(timestamps, i, ts);
        }
    }
    values = PyList_New((Py_ssize_t)n);
    if (values == NULL) goto done;
    for (Py_ssize_t i = 0; i < (Py_ssize_t)n; i++) {
        PyObject *v = get_value(&r, 0);
        if (v == NULL) goto done;
        PyList_SET_ITEM(values, i, v);
    }
    if (r.p != r.end) {
        corrupt("bytes after the last record");
        goto done;
    }
    result = PyTuple_Pack(2, values, timestamps ? timestamps : Py_None);
done:
    Py_XDECREF(values);
    Py_XDECREF(timestamps);
    PyBuffer_Release(&view);
    return result;
}

static PyMethodDef plainbatch_methods[] = {
    {"encode", (PyCFunction)(void (*)(void))plainbatch_encode, METH_FASTCALL,
     "encode(values, timestamps): the batch in the plain format, or None if it is not plain."},
    {"decode", (PyCFunction)plainbatch_decode, METH_VARARGS,
     "decode(buffer, start): (values, timestamps or None) of a plain batch at buffer[start:]."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef plainbatch_module = {
    PyModuleDef_HEAD_INIT, "_plainbatch", "The plain batch codec in C.", -1, plainbatch_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__plainbatch(void) {
    PyObject *m = PyModule_Create(&plainbatch_module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "VERSION", PLAINBATCH_VERSION) < 0 ||
        PyModule_AddIntConstant(m, "MAX_DEPTH", MAX_DEPTH) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
