/* kbp_py.c: the CPython the shim runs its TCP in (kbypass.sockapi.shimtcp, one ShimTcp per process).
 *
 * Nothing of Python is linked: libpython3.11.so.1.0 is dlopen'ed (RTLD_GLOBAL, so kbypass's C modules resolve
 * against it) only when the first TCP socket is to be accelerated, so a UDP-only app never loads it. It is
 * initialised without signal handlers (the app's stay the app's), without site and with the module path of
 * the kbypass that ran `kbypass run` (KBYPASS_LIBPYTHON, KBYPASS_PYTHONPATH, KBYPASS_PYTHONHOME: tools/run.py
 * exports them). A process that already has an interpreter (a Python app: Py_IsInitialized is there) keeps
 * its TCP on the kernel (see kbp_py_ready: one GIL for the app and the shim could deadlock). Every call takes
 * the GIL (PyGILState_Ensure) under kbp_lock, from the app's threads or the flusher's.
 *
 * The functions come through dlsym, by name, into a table: Python.h is read for the types only. */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kbp.h"

#define LIBPYTHON "libpython3.11.so.1.0"

static struct {
    int (*IsInitialized)(void);
    const char *(*GetVersion)(void);
    void (*PreConfig_InitIsolatedConfig)(PyPreConfig *);
    PyStatus (*PreInitialize)(const PyPreConfig *);
    void (*Config_InitIsolatedConfig)(PyConfig *);
    PyStatus (*Config_SetBytesString)(PyConfig *, wchar_t **, const char *);
    PyStatus (*InitializeFromConfig)(const PyConfig *);
    void (*Config_Clear)(PyConfig *);
    int (*Status_Exception)(PyStatus);
    PyStatus (*WideStringList_Append)(PyWideStringList *, const wchar_t *);
    wchar_t *(*DecodeLocale)(const char *, size_t *);
    PyThreadState *(*Eval_SaveThread)(void);
    PyGILState_STATE (*GILState_Ensure)(void);
    void (*GILState_Release)(PyGILState_STATE);
    PyObject *(*Import_ImportModule)(const char *);
    PyObject *(*Object_GetAttrString)(PyObject *, const char *);
    PyObject *(*Object_CallObject)(PyObject *, PyObject *);
    PyObject *(*VaBuildValue)(const char *, va_list);
    void (*DecRef)(PyObject *);
    PyObject *(*Tuple_GetItem)(PyObject *, Py_ssize_t);
    Py_ssize_t (*Tuple_Size)(PyObject *);
    PyObject *(*List_GetItem)(PyObject *, Py_ssize_t);
    Py_ssize_t (*List_Size)(PyObject *);
    int (*Bytes_AsStringAndSize)(PyObject *, char **, Py_ssize_t *);
    int (*Long_Check)(PyObject *);
    long (*Long_AsLong)(PyObject *);
    double (*Float_AsDouble)(PyObject *);
    PyObject *(*Err_Occurred)(void);
    void (*Err_Print)(void);
    void (*Err_Clear)(void);
    void (*OS_BeforeFork)(void);
    void (*OS_AfterFork_Parent)(void);
    void (*OS_AfterFork_Child)(void);
} py;

static PyObject *host; /* the ShimTcp */
static int state;      /* 0 not tried, 1 ready, -1 failed */
static int own;        /* the interpreter is ours (a fork's child: up, its ShimTcp still to make) */
static PyGILState_STATE fork_gil;
static int fork_held;
static char failed[256];

static int load(void *lib, char *why, size_t cap) {
#define SYM(field, name)                                                                          \
    if (!(py.field = (__typeof__(py.field))dlsym(lib, name))) {                                   \
        snprintf(why, cap, "%s has no %s", LIBPYTHON, name);                                      \
        return -1;                                                                                \
    }
    SYM(IsInitialized, "Py_IsInitialized") SYM(GetVersion, "Py_GetVersion");
    SYM(PreConfig_InitIsolatedConfig, "PyPreConfig_InitIsolatedConfig") SYM(PreInitialize, "Py_PreInitialize");
    SYM(Config_InitIsolatedConfig, "PyConfig_InitIsolatedConfig");
    SYM(Config_SetBytesString, "PyConfig_SetBytesString") SYM(InitializeFromConfig, "Py_InitializeFromConfig");
    SYM(Config_Clear, "PyConfig_Clear") SYM(Status_Exception, "PyStatus_Exception");
    SYM(WideStringList_Append, "PyWideStringList_Append") SYM(DecodeLocale, "Py_DecodeLocale");
    SYM(Eval_SaveThread, "PyEval_SaveThread") SYM(GILState_Ensure, "PyGILState_Ensure");
    SYM(GILState_Release, "PyGILState_Release") SYM(Import_ImportModule, "PyImport_ImportModule");
    SYM(Object_GetAttrString, "PyObject_GetAttrString") SYM(Object_CallObject, "PyObject_CallObject");
    SYM(VaBuildValue, "_Py_VaBuildValue_SizeT") SYM(DecRef, "Py_DecRef");
    SYM(Tuple_GetItem, "PyTuple_GetItem") SYM(Tuple_Size, "PyTuple_Size");
    SYM(List_GetItem, "PyList_GetItem") SYM(List_Size, "PyList_Size");
    SYM(Bytes_AsStringAndSize, "PyBytes_AsStringAndSize") SYM(Long_AsLong, "PyLong_AsLong");
    SYM(Float_AsDouble, "PyFloat_AsDouble") SYM(Err_Occurred, "PyErr_Occurred");
    SYM(Err_Print, "PyErr_Print") SYM(Err_Clear, "PyErr_Clear");
    SYM(OS_BeforeFork, "PyOS_BeforeFork") SYM(OS_AfterFork_Parent, "PyOS_AfterFork_Parent");
    SYM(OS_AfterFork_Child, "PyOS_AfterFork_Child");
#undef SYM
    return 0;
}

/* A new interpreter of our own: isolated (no PYTHON* variables of the app's, no site, no signal handlers). */
static int start_own(char *why, size_t cap) {
    PyPreConfig pre;
    py.PreConfig_InitIsolatedConfig(&pre);
    pre.utf8_mode = 1;
    PyStatus st = py.PreInitialize(&pre);
    if (py.Status_Exception(st)) {
        snprintf(why, cap, "Python's pre-initialisation failed: %s", st.err_msg ? st.err_msg : "?");
        return -1;
    }
    PyConfig c;
    py.Config_InitIsolatedConfig(&c);
    c.install_signal_handlers = 0;
    c.site_import = 0;
    c.write_bytecode = 0;
    c.parse_argv = 0;
    c.buffered_stdio = 0;
    const char *home = kbp_env("KBYPASS_PYTHONHOME"), *path = kbp_env("KBYPASS_PYTHONPATH");
    if (home && *home) st = py.Config_SetBytesString(&c, &c.home, home);
    if (path && *path) { /* the module path whole, as the kbypass that ran `kbypass run` had it */
        c.module_search_paths_set = 1;
        char *copy = strdup(path), *save = NULL;
        for (char *p = copy ? strtok_r(copy, ":", &save) : NULL; p && !py.Status_Exception(st);
             p = strtok_r(NULL, ":", &save)) {
            wchar_t *w = py.DecodeLocale(p, NULL);
            if (w) st = py.WideStringList_Append(&c.module_search_paths, w);
            free(w); /* PyMem_RawFree's allocator is malloc's */
        }
        free(copy);
    }
    if (!py.Status_Exception(st)) st = py.Config_SetBytesString(&c, &c.program_name, "kbypass-shim");
    if (!py.Status_Exception(st)) st = py.InitializeFromConfig(&c);
    py.Config_Clear(&c);
    if (py.Status_Exception(st)) {
        snprintf(why, cap, "Python did not start: %s", st.err_msg ? st.err_msg : "?");
        return -1;
    }
    py.Eval_SaveThread(); /* the GIL is taken per call, by whichever thread calls */
    return 0;
}

static PyObject *build(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    PyObject *o = py.VaBuildValue(fmt, ap);
    va_end(ap);
    return o;
}

/* 1 when the app is a Python program (with why): sharing its interpreter would share its GIL, and an app
 * thread holding it in a call the shim takes kbp_lock in (setsockopt, getsockopt) against the flusher holding
 * kbp_lock and waiting for the GIL to run a TCP timer is a deadlock, so its TCP stays the kernel's (its UDP
 * is accelerated as ever). */
int kbp_py_app(char *why, size_t cap) {
    int (*already)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "Py_IsInitialized");
    if (!already || !already() || state > 0 || own) return 0;
    const char *(*ver)(void) = (const char *(*)(void))dlsym(RTLD_DEFAULT, "Py_GetVersion");
    snprintf(why, cap, "a Python app (%.6s): its TCP stays the kernel's (the shim's TCP would share the app's GIL)",
             ver ? ver() : "?");
    return 1;
}

/* The ShimTcp, made at the first call: 0, or -1 with why (said once; TCP stays on the kernel). */
int kbp_py_ready(int mss, char *why, size_t cap) {
    if (state) {
        if (state < 0) snprintf(why, cap, "%s", failed);
        return state > 0 ? 0 : -1;
    }
    state = -1;
    void *lib = NULL;
    if (own) { /* a fork's child: the interpreter is up (kbp_py_after_fork), only a ShimTcp of its own to make */
    } else if (kbp_py_app(failed, sizeof(failed))) {
        snprintf(why, cap, "%s", failed);
        return -1;
    } else if (!(lib = dlopen(kbp_env("KBYPASS_LIBPYTHON") ? kbp_env("KBYPASS_LIBPYTHON") : LIBPYTHON,
                              RTLD_NOW | RTLD_GLOBAL))) {
        snprintf(failed, sizeof(failed), "cannot load %s (apt install libpython3.11): %s", LIBPYTHON, dlerror());
        snprintf(why, cap, "%s", failed);
        return -1;
    }
    if (!own &&
        (load(lib, failed, sizeof(failed)) < 0 || (!py.IsInitialized() && start_own(failed, sizeof(failed)) < 0))) {
        snprintf(why, cap, "%s", failed);
        return -1;
    }
    PyGILState_STATE g = py.GILState_Ensure();
    PyObject *mod = py.Import_ImportModule("kbypass.sockapi.shimtcp"), *cls = NULL, *args = NULL;
    if (mod) cls = py.Object_GetAttrString(mod, "ShimTcp");
    if (cls) args = build("(i)", mss);
    if (args) host = py.Object_CallObject(cls, args);
    if (!host) {
        py.Err_Print();
        snprintf(failed, sizeof(failed), "kbypass.sockapi.shimtcp did not load (KBYPASS_PYTHONPATH=%.120s)",
                 kbp_env("KBYPASS_PYTHONPATH") ? kbp_env("KBYPASS_PYTHONPATH") : "unset");
    }
    if (args) py.DecRef(args);
    if (cls) py.DecRef(cls);
    if (mod) py.DecRef(mod);
    py.GILState_Release(g);
    if (!host) {
        snprintf(why, cap, "%s", failed);
        return -1;
    }
    state = 1;
    own = 1;
    return 0;
}

/* fork (pthread_atfork, kbp_fork.c), with kbp_lock held across it: no other thread is in the shim, so none is
 * in Python (every call of Python is under kbp_lock). CPython's documented protocol for a C fork() of a process
 * with an interpreter (what os.fork does): PyOS_BeforeFork with the GIL held by the forking thread, then
 * PyOS_AfterFork_Parent or PyOS_AfterFork_Child, which in the child makes this thread the main one, re-makes the
 * GIL and the import lock and drops the other threads' states (the flusher's thread does not exist there).
 * Only with an interpreter of ours (own): a Python app's os.fork runs the protocol itself. */
void kbp_py_before_fork(void) {
    if (!own) return; /* up since a ShimTcp was made here or in a parent (whether this process made its own or not) */
    fork_gil = py.GILState_Ensure();
    py.OS_BeforeFork();
    fork_held = 1;
}

/* The child's ShimTcp is a new one (made at its first accelerated socket, kbp_py_ready): the parent's knows the
 * parent's connections and rings, none of which are the child's. It is dropped here, under the GIL. */
void kbp_py_after_fork(int child) {
    if (!fork_held) return;
    fork_held = 0;
    if (!child) {
        py.OS_AfterFork_Parent();
        py.GILState_Release(fork_gil);
        return;
    }
    py.OS_AfterFork_Child();
    if (host) py.DecRef(host);
    host = NULL;
    state = 0;
    /* Not GILState_Release: forked from a thread other than the one that started Python, fork_gil's thread state
     * was made by before_fork's Ensure, and OS_AfterFork_Child made it the child's only one (the others are
     * gone). Release would delete it, leaving the child with no thread state and the runtime's main one still
     * marked bound: the next Ensure aborts ("init_threadstate: thread state already initialized"). The thread
     * state stays, this thread's for good (the GIL is let go as after Py_Initialize); the parent's Release is
     * the usual one (its other threads' states are there). */
    py.Eval_SaveThread();
}

/* One call of the ShimTcp (under kbp_lock): its result an int (returned) or bytes (copied into buf, at most
 * cap, their length returned); its packets go to kbp_tcp_transmit, its changes to kbp_tcp_changed, its
 * deadline to kbp_tcp_deadline. A Python exception: printed, -EIO. */
long kbp_py_call(const char *method, void *buf, size_t cap, const char *fmt, ...) {
    if (state <= 0) return -EIO;
    kbp_tcp_catch_up(); /* segments predicted in C come first, as they came */
    PyGILState_STATE g = py.GILState_Ensure();
    va_list ap;
    va_start(ap, fmt);
    PyObject *args = py.VaBuildValue(fmt, ap);
    va_end(ap);
    PyObject *fn = args ? py.Object_GetAttrString(host, method) : NULL;
    PyObject *res = fn ? py.Object_CallObject(fn, args) : NULL;
    long r = -EIO;
    if (res && py.Tuple_Size(res) == 4) {
        PyObject *v = py.Tuple_GetItem(res, 0), *pk = py.Tuple_GetItem(res, 1), *ch = py.Tuple_GetItem(res, 2);
        char *p;
        Py_ssize_t n;
        if (py.Bytes_AsStringAndSize(v, &p, &n) == 0) {
            if ((size_t)n > cap) n = (Py_ssize_t)cap;
            if (n) memcpy(buf, p, (size_t)n);
            r = (long)n;
        } else {
            py.Err_Clear();
            r = py.Long_AsLong(v);
        }
        Py_ssize_t k = py.List_Size(pk);
        for (Py_ssize_t i = 0; i < k; i++)
            if (py.Bytes_AsStringAndSize(py.List_GetItem(pk, i), &p, &n) == 0)
                kbp_tcp_transmit((uint8_t *)p, (uint32_t)n);
        if (py.Bytes_AsStringAndSize(ch, &p, &n) == 0)
            for (Py_ssize_t i = 0; i + 8 <= n; i += 8) {
                uint32_t sid, mask;
                memcpy(&sid, p + i, 4);
                memcpy(&mask, p + i + 4, 4);
                kbp_tcp_changed(sid, mask);
            }
        kbp_tcp_deadline(py.Float_AsDouble(py.Tuple_GetItem(res, 3)));
    }
    if (!res || py.Err_Occurred()) py.Err_Print();
    if (res) py.DecRef(res);
    if (fn) py.DecRef(fn);
    if (args) py.DecRef(args);
    py.GILState_Release(g);
    return r;
}
