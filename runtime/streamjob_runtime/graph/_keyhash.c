/* Key hashing and hash partitioning in C: the per-record work of a keyed shuffle.
 *
 * An optional accelerator for streamjob_runtime.graph.keygroups, built with the package
 * when a C compiler is at hand (hatch_build.py); without it keygroups runs the same
 * computation in Python.  Both must give identical results: a key's key group decides
 * which subtask owns its state, in every process and across restores.
 *
 *   stable_hash(key)   keygroups.stable_hash, exactly: C for int, bool, float, str, bytes,
 *                      None and tuples of these; other keys call the Python function
 *                      registered with configure().
 *   split(values, timestamps, key_selector, max_parallelism, parallelism, tuple_index)
 *                      the records of one batch bucketed by the subtask that owns each
 *                      record's key: (buckets, timestamp buckets or None), order kept.
 *                      tuple_index >= 0 says the key selector is itemgetter(tuple_index).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

/* Bumped with every change of behaviour: keygroups ignores a build of another version. */
#define KEYHASH_VERSION 2

static PyObject *fallback_hash = NULL; /* keygroups' Python stable_hash, for other keys */
static uint32_t crc_table[256];

static void crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

/* zlib.crc32 (CRC-32/ISO-HDLC) of n bytes. */
static uint32_t crc32_of(const unsigned char *p, Py_ssize_t n) {
    uint32_t c = 0xFFFFFFFFu;
    while (n-- > 0) c = crc_table[(c ^ *p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

/* keygroups._mix: the splitmix64 finaliser (uint64 arithmetic wraps as the Python masks). */
static inline uint64_t mix(uint64_t h) {
    h += 0x9E3779B97F4A7C15ull;
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ull;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBull;
    return h ^ (h >> 31);
}

/* The stable hash of key into *out: 0, or -1 with an exception set. */
static int key_hash(PyObject *key, uint64_t *out) {
    PyTypeObject *t = Py_TYPE(key);
    if (t == &PyLong_Type || t == &PyBool_Type || t == &PyFloat_Type) {
        /* hash(key) & MASK64: a Py_hash_t read as its two's complement. */
        Py_hash_t h = PyObject_Hash(key);
        if (h == -1 && PyErr_Occurred()) return -1;
        *out = mix((uint64_t)h);
        return 0;
    }
    if (t == &PyUnicode_Type) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(key, &n); /* raises as str.encode() does */
        if (s == NULL) return -1;
        *out = mix(crc32_of((const unsigned char *)s, n));
        return 0;
    }
    if (t == &PyBytes_Type) {
        *out = mix(crc32_of((const unsigned char *)PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key)));
        return 0;
    }
    if (key == Py_None) {
        *out = mix(0);
        return 0;
    }
    if (t == &PyTuple_Type) {
        uint64_t h = 0x345678;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(key); i++) {
            uint64_t item;
            if (key_hash(PyTuple_GET_ITEM(key, i), &item) < 0) return -1;
            h = mix(h ^ item);
        }
        *out = h;
        return 0;
    }
    if (fallback_hash == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_keyhash.configure() was not called");
        return -1;
    }
    PyObject *r = PyObject_CallOneArg(fallback_hash, key);
    if (r == NULL) return -1;
    uint64_t v = PyLong_AsUnsignedLongLong(r);
    Py_DECREF(r);
    if (v == (uint64_t)-1 && PyErr_Occurred()) return -1;
    *out = v;
    return 0;
}

static PyObject *keyhash_configure(PyObject *module, PyObject *fallback) {
    if (!PyCallable_Check(fallback)) {
        PyErr_SetString(PyExc_TypeError, "configure() takes the Python stable_hash");
        return NULL;
    }
    Py_INCREF(fallback);
    Py_XSETREF(fallback_hash, fallback);
    Py_RETURN_NONE;
}

static PyObject *keyhash_stable_hash(PyObject *module, PyObject *key) {
    uint64_t h;
    if (key_hash(key, &h) < 0) return NULL;
    return PyLong_FromUnsignedLongLong(h);
}

static int as_size(PyObject *o, const char *what, Py_ssize_t *out) {
    Py_ssize_t v = PyLong_AsSsize_t(o);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (v < 1 || v > (1 << 24)) {
        PyErr_Format(PyExc_ValueError, "%s must be between 1 and 2**24, not %zd", what, v);
        return -1;
    }
    *out = v;
    return 0;
}

static PyObject *keyhash_split(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "split(values, timestamps, key_selector,"
                                         " max_parallelism, parallelism, tuple_index)");
        return NULL;
    }
    PyObject *values = args[0], *timestamps = args[1], *selector = args[2];
    Py_ssize_t max_parallelism, parallelism;
    if (!PyList_CheckExact(values)) {
        PyErr_SetString(PyExc_TypeError, "split() takes the records as a list");
        return NULL;
    }
    if (timestamps != Py_None && !PyList_CheckExact(timestamps)) {
        PyErr_SetString(PyExc_TypeError, "split() takes the timestamps as a list or None");
        return NULL;
    }
    if (as_size(args[3], "max_parallelism", &max_parallelism) < 0 ||
        as_size(args[4], "parallelism", &parallelism) < 0)
        return NULL;
    /* tuple_index >= 0: the key selector is itemgetter(tuple_index), so the key of an
       exact tuple that long is its item, read without a call (any other record: call). */
    Py_ssize_t tuple_index = PyLong_AsSsize_t(args[5]);
    if (tuple_index == -1 && PyErr_Occurred()) return NULL;
    Py_ssize_t n = PyList_GET_SIZE(values);
    if (timestamps != Py_None && PyList_GET_SIZE(timestamps) != n) {
        PyErr_Format(PyExc_ValueError, "%zd records but %zd timestamps", n,
                     PyList_GET_SIZE(timestamps));
        return NULL;
    }
    /* Pass 1: each record's target, with a reference to the record (and its timestamp)
       taken now: the key selector is user code and may change the lists. */
    PyObject **held = PyMem_Malloc(sizeof(PyObject *) * (size_t)(2 * n + 1));
    Py_ssize_t *targets = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(n + 1));
    Py_ssize_t *counts = PyMem_Calloc((size_t)parallelism, sizeof(Py_ssize_t));
    PyObject *buckets = NULL, *ts_buckets = NULL, *result = NULL;
    Py_ssize_t taken = 0;
    if (held == NULL || targets == NULL || counts == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (i >= PyList_GET_SIZE(values) ||
            (timestamps != Py_None && i >= PyList_GET_SIZE(timestamps))) {
            PyErr_SetString(PyExc_RuntimeError, "the batch changed during split()");
            goto done;
        }
        PyObject *value = Py_NewRef(PyList_GET_ITEM(values, i));
        held[2 * i] = value;
        held[2 * i + 1] =
            timestamps == Py_None ? NULL : Py_NewRef(PyList_GET_ITEM(timestamps, i));
        taken = i + 1;
        PyObject *key;
        if (tuple_index >= 0 && PyTuple_CheckExact(value) &&
            tuple_index < PyTuple_GET_SIZE(value))
            key = Py_NewRef(PyTuple_GET_ITEM(value, tuple_index));
        else
            key = PyObject_CallOneArg(selector, value);
        uint64_t h;
        int failed = key == NULL || key_hash(key, &h) < 0;
        Py_XDECREF(key);
        if (failed) goto done;
        Py_ssize_t target =
            (Py_ssize_t)((h % (uint64_t)max_parallelism) * (uint64_t)parallelism /
                         (uint64_t)max_parallelism);
        targets[i] = target;
        counts[target]++;
    }
    /* Pass 2: lists of their final sizes, filled with the references of pass 1. */
    buckets = PyList_New(parallelism);
    ts_buckets = timestamps == Py_None ? Py_NewRef(Py_None) : PyList_New(parallelism);
    if (buckets == NULL || ts_buckets == NULL) goto done;
    for (Py_ssize_t t = 0; t < parallelism; t++) {
        PyObject *b = PyList_New(counts[t]);
        if (b == NULL) goto done;
        PyList_SET_ITEM(buckets, t, b);
        if (timestamps != Py_None) {
            PyObject *tb = PyList_New(counts[t]);
            if (tb == NULL) goto done;
            PyList_SET_ITEM(ts_buckets, t, tb);
        }
        counts[t] = 0; /* now the next free slot of bucket t */
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t t = targets[i], slot = counts[t]++;
        PyList_SET_ITEM(PyList_GET_ITEM(buckets, t), slot, held[2 * i]);
        if (timestamps != Py_None)
            PyList_SET_ITEM(PyList_GET_ITEM(ts_buckets, t), slot, held[2 * i + 1]);
    }
    taken = 0; /* the buckets own the references now */
    result = PyTuple_Pack(2, buckets, ts_buckets);
done:
    for (Py_ssize_t i = 0; i < taken; i++) {
        Py_DECREF(held[2 * i]);
        Py_XDECREF(held[2 * i + 1]);
    }
    PyMem_Free(held);
    PyMem_Free(targets);
    PyMem_Free(counts);
    Py_XDECREF(buckets);
    Py_XDECREF(ts_buckets);
    return result;
}

static PyMethodDef keyhash_methods[] = {
    {"configure", (PyCFunction)keyhash_configure, METH_O,
     "configure(fallback): the Python stable_hash, for keys of other types."},
    {"stable_hash", (PyCFunction)keyhash_stable_hash, METH_O,
     "stable_hash(key): keygroups.stable_hash(key)."},
    {"split", (PyCFunction)(void (*)(void))keyhash_split, METH_FASTCALL,
     "split(values, timestamps, key_selector, max_parallelism, parallelism, tuple_index): the "
     "records (and timestamps) bucketed by the subtask that owns each record's key."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef keyhash_module = {
    PyModuleDef_HEAD_INIT, "_keyhash", "Key hashing and hash partitioning in C.", -1,
    keyhash_methods,
};

PyMODINIT_FUNC PyInit__keyhash(void) {
    crc_init();
    PyObject *m = PyModule_Create(&keyhash_module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "VERSION", KEYHASH_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
