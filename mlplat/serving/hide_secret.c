/* Preloaded into tritonserver (LD_PRELOAD) by mlplat: before main() runs, the values of its
 * --grpc-restricted-protocol / --http-restricted-api options, which end in the platform's model-control
 * secret (<protocols>:<header>=<secret>), are copied to the heap for Triton to parse, and masked in the
 * process's argument area, so other accounts do not read the secret in /proc/<pid>/cmdline or `ps`.
 * Built by mlplat.serving.triton with the machine's C compiler: cc -shared -fPIC. */
#include <stdlib.h>
#include <string.h>

static int restricted(const char *arg) {
    return strncmp(arg, "--grpc-restricted-protocol=", 27) == 0 || strncmp(arg, "--http-restricted-api=", 22) == 0;
}

static void hide(int argc, char **argv, char **envp) {
    (void)envp;
    for (int i = 1; i < argc; i++) {
        if (!argv[i] || !restricted(argv[i]))
            continue;
        char *secret = strchr(strchr(argv[i], '=') + 1, '=');  /* the '=' after the header's name */
        char *copy = strdup(argv[i]);
        if (!secret || !copy)
            continue;
        memset(secret + 1, '*', strlen(secret + 1));
        argv[i] = copy;
    }
}

__attribute__((section(".init_array"), used)) static void (*hide_at_start)(int, char **, char **) = hide;
