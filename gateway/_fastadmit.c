/* gateway._fastadmit: the gateway's admission of an uplink in one C call.
 *
 * What gateway/pipeline.py's Python admission does before the replay window,
 * for the frames nodes send nearly always (unencrypted, deterministic CBOR,
 * every key known, every value in range):
 *
 *   length and header (protocol/frame.py, SPEC.md), the node's keys from the
 *   registry, HMAC-SHA256 MIC truncated to 4 bytes from the node's
 *   precomputed inner/outer SHA-256 states (RFC 2104 section 4, OpenSSL's
 *   SHA-256, constant-time compare), then the body decoded and checked
 *   against the per-type plan gateway/bodies.py compiles (fast_plans()).
 *
 * It answers only when sure; anything else -- encrypted frames, downlink
 * types, a bad MIC, an unknown node, non-shortest or indefinite CBOR, keys
 * out of order, unknown keys, values of another kind or out of range, any
 * error -- is None, "not sure", and the Python reference path decides, so
 * verdicts and error messages are the reference's byte for byte.
 *
 * Copies: a node's last ADMIT_RECENT frames that passed the MIC are kept
 * (references to their bytes objects). The same bytes again carry the same
 * MIC, checked with the same keys object: the same MIC verdict, so a copy
 * heard by a second radio is answered without hashing or decoding (body None:
 * the pipeline only needs the counter for a duplicate, and asks the reference
 * path if the replay window says the counter is new after all). The memory is
 * dropped whenever the node's keys object changes (re-key) and by forget().
 *
 * Memory safety: input comes from the air. Every read is bounds-checked
 * against the frame length (at most MAX_FRAME = 255 bytes); nothing is
 * allocated per call except the result objects (body dict, its values, the
 * plain bytes, the result tuple) and, once per node and key, its state.
 * tests/test_gateway_admit_fast.py checks it differentially against the
 * Python path (hypothesis), under -X dev, and for reference leaks.
 */

#define PY_SSIZE_T_CLEAN
#define OPENSSL_SUPPRESS_DEPRECATED /* SHA256_CTX: the only OpenSSL 3 API whose state can be copied without allocating */
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>

#define HEADER_LEN 9
#define MIC_LEN 4
#define MIN_LEN (HEADER_LEN + 1 + MIC_LEN)
#define MAX_FRAME 255 /* protocol/frame.py MAX_LEN: a LoRa PHY payload */
#define VERSION 1
#define FLAG_ENCRYPTED 0x10
#define DOWNLINK_BIT 0x08
#define TYPE_MASK 0x0F
#define N_TYPES 16
#define N_KEYS 24 /* keys are CBOR uints below 24: one byte on the air */
#define ADMIT_RECENT 4 /* frames remembered per node to recognise copies */
#define SHA_BLOCK 64

enum { K_NONE = 0, K_INT = 1, K_BYTES = 2, K_TEXT = 3, K_PACKED = 4 };

typedef struct {
    int kind;
    int64_t lo, hi;       /* K_INT: value range; K_BYTES/K_TEXT: length range; K_PACKED: hi = most values */
    uint8_t allowed[32];  /* K_PACKED: bit x set when byte x is allowed */
} Field;

typedef struct {
    int known; /* a plan exists for this message type */
    uint32_t required; /* bit k: key k required */
    Field fields[N_KEYS];
} Plan;

/* ------------------------------------------------------------------ per-node state */

typedef struct {
    PyObject_HEAD
    PyObject *keys; /* the NodeKeys object this state was built from (identity checked each call) */
    PyObject *mic;  /* its mic_up HmacKey object */
    PyObject *node_id; /* keys.node_id when built */
    SHA256_CTX inner, outer;
    PyObject *recent[ADMIT_RECENT]; /* bytes objects that passed the MIC, or NULL */
    int next;
} NodeState;

static void
NodeState_dealloc(NodeState *self)
{
    Py_XDECREF(self->keys);
    Py_XDECREF(self->mic);
    Py_XDECREF(self->node_id);
    for (int i = 0; i < ADMIT_RECENT; i++)
        Py_XDECREF(self->recent[i]);
    OPENSSL_cleanse(&self->inner, sizeof(self->inner));
    OPENSSL_cleanse(&self->outer, sizeof(self->outer));
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject NodeStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._fastadmit._NodeState",
    .tp_basicsize = sizeof(NodeState),
    .tp_dealloc = (destructor)NodeState_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A node's precomputed MIC states and recently verified frames (no key material is exposed).",
};

/* ------------------------------------------------------------------ the admitter */

typedef struct {
    PyObject_HEAD
    PyObject *registry; /* registry.get(node_id) -> entry with .keys, or None; looked up on every call, as the Python path does */
    PyObject *nodes; /* dict: node_id -> NodeState */
    Plan plans[N_TYPES];
    unsigned long long fast, copies, unsure;
} Admitter;

static PyObject *s_get, *s_keys, *s_mic_up, *s_node_id, *s_key; /* interned attribute names */

static int
Admitter_traverse(Admitter *self, visitproc visit, void *arg)
{
    Py_VISIT(self->registry);
    Py_VISIT(self->nodes);
    return 0;
}

static int
Admitter_clear(Admitter *self)
{
    Py_CLEAR(self->registry);
    Py_CLEAR(self->nodes);
    return 0;
}

static void
Admitter_dealloc(Admitter *self)
{
    PyObject_GC_UnTrack(self);
    Admitter_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* plans: {mtype: (required_keys, ((key, kind, lo, hi, allowed_bytes), ...))} from gateway/bodies.py fast_plans() */
static int
load_plans(Admitter *self, PyObject *plans)
{
    if (!PyDict_Check(plans)) {
        PyErr_SetString(PyExc_TypeError, "plans must be a dict");
        return -1;
    }
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(plans, &pos, &k, &v)) {
        long mtype = PyLong_AsLong(k);
        if (mtype == -1 && PyErr_Occurred())
            return -1;
        if (mtype < 0 || mtype >= N_TYPES) {
            PyErr_Format(PyExc_ValueError, "message type %ld out of range", mtype);
            return -1;
        }
        PyObject *required, *fields;
        if (!PyArg_ParseTuple(v, "OO!", &required, &PyTuple_Type, &fields))
            return -1;
        Plan *p = &self->plans[mtype];
        memset(p, 0, sizeof(*p));
        PyObject *it = PyObject_GetIter(required);
        if (it == NULL)
            return -1;
        PyObject *item;
        while ((item = PyIter_Next(it)) != NULL) {
            long key = PyLong_AsLong(item);
            Py_DECREF(item);
            if (key == -1 && PyErr_Occurred()) {
                Py_DECREF(it);
                return -1;
            }
            if (key < 0 || key >= N_KEYS) {
                Py_DECREF(it);
                PyErr_Format(PyExc_ValueError, "required key %ld out of range", key);
                return -1;
            }
            p->required |= 1u << key;
        }
        Py_DECREF(it);
        if (PyErr_Occurred())
            return -1;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(fields); i++) {
            int key, kind;
            long long lo, hi;
            const char *allowed;
            Py_ssize_t nallowed;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields, i), "iiLLy#", &key, &kind, &lo, &hi, &allowed, &nallowed))
                return -1;
            if (key < 0 || key >= N_KEYS || kind < K_INT || kind > K_PACKED || lo > hi) {
                PyErr_Format(PyExc_ValueError, "bad field plan for type %ld key %d", mtype, key);
                return -1;
            }
            Field *f = &p->fields[key];
            f->kind = kind;
            f->lo = lo;
            f->hi = hi;
            for (Py_ssize_t j = 0; j < nallowed; j++) {
                uint8_t x = (uint8_t)allowed[j];
                f->allowed[x >> 3] |= (uint8_t)(1u << (x & 7));
            }
        }
        p->known = 1;
    }
    return 0;
}

static int
Admitter_init(Admitter *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"registry", "plans", NULL};
    PyObject *registry, *plans;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:Admitter", kwlist, &registry, &plans))
        return -1;
    memset(self->plans, 0, sizeof(self->plans));
    if (load_plans(self, plans) < 0)
        return -1;
    PyObject *nodes = PyDict_New();
    if (nodes == NULL)
        return -1;
    Py_INCREF(registry);
    Py_XSETREF(self->registry, registry);
    Py_XSETREF(self->nodes, nodes);
    self->fast = self->copies = self->unsure = 0;
    return 0;
}

/* A fresh state for (keys, mic): the HMAC pads hashed once. NULL with no exception: not sure. */
static NodeState *
new_state(PyObject *keys, PyObject *mic, PyObject *node_id)
{
    PyObject *key = PyObject_GetAttr(mic, s_key);
    if (key == NULL) {
        PyErr_Clear();
        return NULL;
    }
    if (!PyBytes_CheckExact(key) || PyBytes_GET_SIZE(key) > SHA_BLOCK) {
        Py_DECREF(key);
        return NULL;
    }
    uint8_t ipad[SHA_BLOCK], opad[SHA_BLOCK];
    memset(ipad, 0, sizeof(ipad));
    memcpy(ipad, PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key));
    Py_DECREF(key);
    for (int i = 0; i < SHA_BLOCK; i++) {
        opad[i] = ipad[i] ^ 0x5C;
        ipad[i] ^= 0x36;
    }
    NodeState *st = PyObject_New(NodeState, &NodeStateType);
    if (st == NULL) {
        OPENSSL_cleanse(ipad, sizeof(ipad));
        OPENSSL_cleanse(opad, sizeof(opad));
        PyErr_Clear();
        return NULL;
    }
    Py_INCREF(keys);
    st->keys = keys;
    Py_INCREF(mic);
    st->mic = mic;
    Py_INCREF(node_id);
    st->node_id = node_id;
    for (int i = 0; i < ADMIT_RECENT; i++)
        st->recent[i] = NULL;
    st->next = 0;
    SHA256_Init(&st->inner);
    SHA256_Update(&st->inner, ipad, SHA_BLOCK);
    SHA256_Init(&st->outer);
    SHA256_Update(&st->outer, opad, SHA_BLOCK);
    OPENSSL_cleanse(ipad, sizeof(ipad));
    OPENSSL_cleanse(opad, sizeof(opad));
    return st;
}

/* The node's state, valid for the keys the registry holds now (a new reference), or NULL: not sure.
 * A new reference because releasing the old state or the keys may run arbitrary code (__del__). */
static NodeState *
node_state(Admitter *self, PyObject *node_id)
{
    PyObject *entry = PyObject_CallMethodOneArg(self->registry, s_get, node_id);
    if (entry == NULL) {
        PyErr_Clear();
        return NULL;
    }
    if (entry == Py_None) { /* unknown node: the reference counts and logs it */
        Py_DECREF(entry);
        return NULL;
    }
    PyObject *keys = PyObject_GetAttr(entry, s_keys);
    Py_DECREF(entry);
    if (keys == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *mic = PyObject_GetAttr(keys, s_mic_up);
    PyObject *kid = mic == NULL ? NULL : PyObject_GetAttr(keys, s_node_id);
    NodeState *st = NULL;
    int same;
    if (kid == NULL) {
        PyErr_Clear();
        goto done;
    }
    /* frame.verify: keys of another node never verify (BadMIC); the reference says so */
    same = PyObject_RichCompareBool(kid, node_id, Py_EQ);
    if (same != 1) {
        PyErr_Clear();
        goto done;
    }
    st = (NodeState *)PyDict_GetItemWithError(self->nodes, node_id);
    if (st != NULL && st->keys == keys && st->mic == mic && st->node_id == kid) {
        Py_INCREF(st);
        goto done;
    }
    if (st == NULL && PyErr_Occurred()) {
        PyErr_Clear();
        goto done;
    }
    /* first frame of this node, or its keys changed: forget what the old keys verified */
    st = new_state(keys, mic, kid);
    if (st != NULL) {
        if (PyDict_SetItem(self->nodes, node_id, (PyObject *)st) < 0) {
            PyErr_Clear();
            Py_CLEAR(st);
        }
    }
done:
    Py_XDECREF(kid);
    Py_XDECREF(mic);
    Py_DECREF(keys);
    return st;
}

/* ------------------------------------------------------------------ CBOR */

/* One head at p[*i] (bounds: n). Returns 0 and sets major and value, or -1: not sure
 * (truncated, indefinite or reserved, or not the shortest form, as cbor2.dumps writes). */
static int
head(const uint8_t *p, Py_ssize_t n, Py_ssize_t *i, int *major, uint64_t *value)
{
    if (*i >= n)
        return -1;
    uint8_t ib = p[*i];
    *major = ib >> 5;
    int ai = ib & 31;
    (*i)++;
    uint64_t v;
    int len;
    if (ai < 24) {
        *value = (uint64_t)ai;
        return 0;
    }
    else if (ai == 24)
        len = 1;
    else if (ai == 25)
        len = 2;
    else if (ai == 26)
        len = 4;
    else if (ai == 27)
        len = 8;
    else
        return -1;
    if (n - *i < len)
        return -1;
    v = 0;
    for (int k = 0; k < len; k++)
        v = (v << 8) | p[*i + k];
    *i += len;
    if ((len == 1 && v < 24) || (len == 2 && v <= 0xFF) || (len == 4 && v <= 0xFFFF) ||
        (len == 8 && v <= 0xFFFFFFFFull))
        return -1;
    *value = v;
    return 0;
}

/* The body p[0..n) as a checked dict, or NULL with no exception: not sure. */
static PyObject *
decode_body(const Plan *plan, const uint8_t *p, Py_ssize_t n)
{
    Py_ssize_t i = 0;
    int major;
    uint64_t count;
    uint32_t present = 0; /* bit k: key k seen; the dict keeps the keys in the order of the bytes, as cbor2 does */
    if (head(p, n, &i, &major, &count) < 0 || major != 5 || count > N_KEYS)
        return NULL;
    PyObject *body = PyDict_New();
    if (body == NULL)
        goto unsure;
    for (uint64_t e = 0; e < count; e++) {
        uint64_t key, v;
        if (head(p, n, &i, &major, &key) < 0 || major != 0 || key >= N_KEYS || (present >> key) & 1)
            goto unsure; /* a duplicate key: cbor2 would keep the last, the reference refuses it */
        const Field *f = &plan->fields[key];
        if (f->kind == K_NONE || head(p, n, &i, &major, &v) < 0)
            goto unsure;
        PyObject *value;
        if (major == 0 || major == 1) {
            if (f->kind != K_INT || v > (uint64_t)INT64_MAX)
                goto unsure;
            int64_t x = major == 0 ? (int64_t)v : -1 - (int64_t)v;
            if (x < f->lo || x > f->hi)
                goto unsure;
            value = PyLong_FromLongLong(x);
        }
        else if (major == 2 || major == 3) {
            if ((uint64_t)(n - i) < v)
                goto unsure;
            const uint8_t *s = p + i;
            Py_ssize_t len = (Py_ssize_t)v;
            i += len;
            if (major == 2 && f->kind == K_BYTES) {
                if (len < f->lo || len > f->hi)
                    goto unsure;
            }
            else if (major == 2 && f->kind == K_PACKED) {
                if (len > f->hi)
                    goto unsure;
                for (Py_ssize_t k = 0; k < len; k++)
                    if (!(f->allowed[s[k] >> 3] & (1u << (s[k] & 7))))
                        goto unsure;
            }
            else if (!(major == 3 && f->kind == K_TEXT))
                goto unsure;
            if (major == 2)
                value = PyBytes_FromStringAndSize((const char *)s, len);
            else {
                value = PyUnicode_DecodeUTF8((const char *)s, len, "strict");
                if (value != NULL &&
                    (PyUnicode_GET_LENGTH(value) < f->lo || PyUnicode_GET_LENGTH(value) > f->hi)) {
                    Py_DECREF(value);
                    goto unsure;
                }
            }
        }
        else
            goto unsure;
        if (value == NULL)
            goto unsure;
        PyObject *k = PyLong_FromLong((long)key);
        if (k == NULL) {
            Py_DECREF(value);
            goto unsure;
        }
        int r = PyDict_SetItem(body, k, value);
        Py_DECREF(k);
        Py_DECREF(value);
        if (r < 0)
            goto unsure;
        present |= 1u << key;
    }
    if (i != n || (plan->required & ~present) != 0)
        goto unsure; /* trailing bytes, or a required key missing */
    return body;
unsure:
    Py_XDECREF(body);
    PyErr_Clear();
    return NULL;
}

/* ------------------------------------------------------------------ admit */

static int
remembered(const NodeState *st, const uint8_t *raw, Py_ssize_t n)
{
    for (int k = 0; k < ADMIT_RECENT; k++) {
        PyObject *b = st->recent[k];
        if (b != NULL && PyBytes_GET_SIZE(b) == n && memcmp(PyBytes_AS_STRING(b), raw, (size_t)n) == 0)
            return 1;
    }
    return 0;
}

static void
remember(NodeState *st, PyObject *raw)
{
    Py_INCREF(raw);
    Py_XSETREF(st->recent[st->next], raw);
    st->next = (st->next + 1) % ADMIT_RECENT;
}

static PyObject *
unsure(Admitter *self)
{
    self->unsure++;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(admit_doc,
"admit(raw) -> None | (node_id, counter, mtype, body, plain)\n\n"
"None: not sure, ask the Python path. Otherwise the frame's MIC verified with\n"
"the node's registered keys and, when body is a dict, the body decoded and\n"
"checked (plain: the body's bytes, its deterministic encoding). body and plain\n"
"are None for a copy of a frame whose bytes already verified.");

static PyObject *
Admitter_admit(Admitter *self, PyObject *raw)
{
    if (!PyBytes_CheckExact(raw))
        return unsure(self);
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(raw);
    Py_ssize_t n = PyBytes_GET_SIZE(raw);
    if (n < MIN_LEN || n > MAX_FRAME)
        return unsure(self);
    uint8_t vt = p[0];
    int mtype = vt & TYPE_MASK;
    if ((vt >> 5) != VERSION || (vt & (FLAG_ENCRYPTED | DOWNLINK_BIT)) || !self->plans[mtype].known)
        return unsure(self);
    uint32_t nid = ((uint32_t)p[1] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 8) | p[4];
    uint32_t counter = ((uint32_t)p[5] << 24) | ((uint32_t)p[6] << 16) | ((uint32_t)p[7] << 8) | p[8];
    PyObject *node_id = PyLong_FromUnsignedLong(nid);
    if (node_id == NULL) {
        PyErr_Clear();
        return unsure(self);
    }
    NodeState *st = node_state(self, node_id);
    if (st == NULL) {
        Py_DECREF(node_id);
        return unsure(self);
    }
    PyObject *body = NULL, *plain = NULL, *result = NULL;
    if (remembered(st, p, n)) {
        self->copies++;
        body = Py_None;
        plain = Py_None;
        Py_INCREF(body);
        Py_INCREF(plain);
    }
    else {
        SHA256_CTX ctx = st->inner;
        uint8_t mac[SHA256_DIGEST_LENGTH];
        SHA256_Update(&ctx, p, (size_t)(n - MIC_LEN));
        SHA256_Final(mac, &ctx);
        ctx = st->outer;
        SHA256_Update(&ctx, mac, sizeof(mac));
        SHA256_Final(mac, &ctx);
        OPENSSL_cleanse(&ctx, sizeof(ctx));
        if (CRYPTO_memcmp(mac, p + n - MIC_LEN, MIC_LEN) != 0) { /* bad MIC: the reference counts and logs it */
            Py_DECREF(st);
            Py_DECREF(node_id);
            return unsure(self);
        }
        body = decode_body(&self->plans[mtype], p + HEADER_LEN, n - HEADER_LEN - MIC_LEN);
        if (body == NULL) {
            Py_DECREF(st);
            Py_DECREF(node_id);
            return unsure(self);
        }
        plain = PyBytes_FromStringAndSize((const char *)p + HEADER_LEN, n - HEADER_LEN - MIC_LEN);
        if (plain == NULL) {
            PyErr_Clear();
            Py_DECREF(body);
            Py_DECREF(st);
            Py_DECREF(node_id);
            return unsure(self);
        }
        remember(st, raw);
        self->fast++;
    }
    Py_DECREF(st);
    PyObject *c = PyLong_FromUnsignedLong(counter);
    PyObject *t = PyLong_FromLong(mtype);
    if (c != NULL && t != NULL)
        result = PyTuple_Pack(5, node_id, c, t, body, plain);
    Py_XDECREF(c);
    Py_XDECREF(t);
    Py_DECREF(node_id);
    Py_DECREF(body);
    Py_DECREF(plain);
    if (result == NULL) {
        PyErr_Clear();
        return unsure(self);
    }
    return result;
}

static PyObject *
Admitter_forget(Admitter *self, PyObject *node_id)
{
    if (PyDict_DelItem(self->nodes, node_id) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return NULL;
        PyErr_Clear();
    }
    Py_RETURN_NONE;
}

static PyObject *
Admitter_clear_nodes(Admitter *self, PyObject *Py_UNUSED(ignored))
{
    PyDict_Clear(self->nodes);
    Py_RETURN_NONE;
}

static PyObject *
Admitter_stats(Admitter *self, PyObject *Py_UNUSED(ignored))
{
    return Py_BuildValue("{sKsKsKsn}", "fast", self->fast, "copies", self->copies, "unsure", self->unsure,
                         "nodes", PyDict_GET_SIZE(self->nodes));
}

static PyObject *
Admitter_repr(Admitter *self)
{
    return PyUnicode_FromFormat("<gateway._fastadmit.Admitter: %zd nodes>", PyDict_GET_SIZE(self->nodes));
}

static PyMethodDef Admitter_methods[] = {
    {"admit", (PyCFunction)Admitter_admit, METH_O, admit_doc},
    {"forget", (PyCFunction)Admitter_forget, METH_O, "Drop a node's state (re-key, reset)."},
    {"clear", (PyCFunction)Admitter_clear_nodes, METH_NOARGS, "Drop every node's state."},
    {"stats", (PyCFunction)Admitter_stats, METH_NOARGS, "Counters: fast, copies, unsure, nodes."},
    {NULL}
};

static PyTypeObject AdmitterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "gateway._fastadmit.Admitter",
    .tp_basicsize = sizeof(Admitter),
    .tp_dealloc = (destructor)Admitter_dealloc,
    .tp_repr = (reprfunc)Admitter_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Admitter(registry, plans): the gateway's compiled admission path (see the module docstring).",
    .tp_traverse = (traverseproc)Admitter_traverse,
    .tp_clear = (inquiry)Admitter_clear,
    .tp_methods = Admitter_methods,
    .tp_init = (initproc)Admitter_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "gateway._fastadmit",
    .m_doc = "The gateway's admission of an uplink in one C call; the Python path in gateway/pipeline.py is the spec.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__fastadmit(void)
{
    if (PyType_Ready(&NodeStateType) < 0 || PyType_Ready(&AdmitterType) < 0)
        return NULL;
    s_get = PyUnicode_InternFromString("get");
    s_keys = PyUnicode_InternFromString("keys");
    s_mic_up = PyUnicode_InternFromString("mic_up");
    s_node_id = PyUnicode_InternFromString("node_id");
    s_key = PyUnicode_InternFromString("key");
    if (!s_get || !s_keys || !s_mic_up || !s_node_id || !s_key)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&AdmitterType);
    if (PyModule_AddObject(m, "Admitter", (PyObject *)&AdmitterType) < 0) {
        Py_DECREF(&AdmitterType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "MAX_FRAME", MAX_FRAME) < 0 ||
        PyModule_AddIntConstant(m, "RECENT", ADMIT_RECENT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
