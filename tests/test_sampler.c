// tests/test_sampler.c - the sampler (section 6) against plain references on fresh random
// logits: greedy and argmax, penalties by their formulas, top-k/top-p/min-p candidate sets
// against a full-sort reference, the distribution of draws against softmax, determinism,
// and argument checking.
#include "../sgllm_impl.c"
#include "test.h"

static float test_normal(void) { // Box-Muller
    double u1 = (test_u64() >> 11) * (1.0 / 9007199254740992.0) + 1e-300;
    double u2 = (test_u64() >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static void random_logits(float *x, int64_t n, float lo, float hi) {
    for (int64_t i = 0; i < n; i++) x[i] = test_uniform(lo, hi);
}

static sgllm_sampler *make(const sgllm_sampler_params *p, int32_t n_vocab) {
    sgllm_sampler *s = NULL;
    sgllm_status st = sgllm_sampler_init(p, n_vocab, &s);
    CHECKF(st == SGLLM_OK && s, "init failed: %s", sgllm_status_string(st));
    return s;
}

static sgllm_sampler_params plain(float temperature) { // no truncation, no penalties
    sgllm_sampler_params p;
    sgllm_sampler_default_params(&p);
    p.temperature = temperature;
    p.top_k = 0;
    p.top_p = 1;
    p.min_p = 0;
    p.seed = test_u64();
    return p;
}

static int32_t ref_argmax(const float *x, int64_t n) {
    int32_t best = -1;
    for (int64_t i = 0; i < n; i++)
        if (!isnan(x[i]) && (best < 0 || x[i] > x[best])) best = (int32_t)i;
    return best < 0 ? 0 : best;
}

static void test_argmax(void) {
    for (int rep = 0; rep < 200; rep++) {
        int64_t n = 1 + (int64_t)(test_u64() % 3000);
        float x[3000];
        random_logits(x, n, -4, 4);
        // Ties (rounded values) and NaNs in some rounds.
        if (rep % 2) for (int64_t i = 0; i < n; i++) x[i] = roundf(x[i]);
        if (rep % 3 == 0) for (int64_t i = 0; i < n; i += 1 + (int64_t)(test_u64() % 7)) x[i] = NAN;
        CHECKF(sgllm__argmax(x, n) == ref_argmax(x, n), "n=%lld: %d vs %d", (long long)n, sgllm__argmax(x, n),
               ref_argmax(x, n));
    }
    float nan3[3] = {NAN, NAN, NAN}, ninf[3] = {-INFINITY, -INFINITY, -INFINITY};
    CHECK(sgllm__argmax(nan3, 3) == 0 && sgllm__argmax(ninf, 3) == 0 && sgllm__argmax(nan3, 0) == -1);
}

static void test_greedy(void) {
    const int32_t sizes[] = {7, 1000, 262144};
    for (int si = 0; si < 3; si++) {
        int32_t n = sizes[si];
        float *x = malloc(sizeof(float) * (size_t)n);
        for (int rep = 0; rep < 20; rep++) {
            random_logits(x, n, -10, 10);
            sgllm_sampler_params p = plain(rep % 2 ? 0.0f : -1.0f);
            p.top_k = 40;
            p.top_p = 0.5f;
            sgllm_sampler *s = make(&p, n);
            CHECK(sgllm_sampler_sample(s, x) == ref_argmax(x, n));
            // top-k = 1 is greedy at any temperature.
            sgllm_sampler_params q = plain(test_uniform(0.05f, 5.0f));
            q.top_k = 1;
            sgllm_sampler *g = make(&q, n);
            int same = 1;
            for (int k = 0; k < 20; k++) same &= sgllm_sampler_sample(g, x) == ref_argmax(x, n);
            CHECKF(same, "top_k=1 at temperature %g is not greedy (n=%d)", q.temperature, n);
            sgllm_sampler_free(s);
            sgllm_sampler_free(g);
        }
        free(x);
    }
}

// Penalties: exactly the tokens of the last penalty_last_n accepted ones change, by the
// formulas; then greedy picks the argmax of the penalized logits.
static void test_penalties(void) {
    enum { V = 300 };
    for (int rep = 0; rep < 100; rep++) {
        float x[V], ref[V];
        random_logits(x, V, -5, 5);
        sgllm_sampler_params p = plain(0);
        p.repeat_penalty = test_uniform(0.5f, 2.0f);
        p.frequency_penalty = rep % 3 ? test_uniform(-1, 1) : 0.0f;
        p.presence_penalty = rep % 4 ? test_uniform(-1, 1) : 0.0f;
        p.penalty_last_n = 1 + (int32_t)(test_u64() % 40);
        sgllm_sampler *s = make(&p, V);
        int32_t n_acc = (int32_t)(test_u64() % 100), hist[100];
        for (int32_t i = 0; i < n_acc; i++) { // few distinct tokens, so they repeat
            hist[i] = (int32_t)(test_u64() % 25) * 7;
            sgllm_sampler_accept(s, hist[i]);
        }
        sgllm_sampler_accept(s, -1); // out of range: ignored
        sgllm_sampler_accept(s, V);
        int count[V] = {0};
        for (int32_t i = n_acc > p.penalty_last_n ? n_acc - p.penalty_last_n : 0; i < n_acc; i++) count[hist[i]]++;
        for (int t = 0; t < V; t++) {
            double l = x[t];
            if (count[t]) {
                l = l > 0 ? l / p.repeat_penalty : l * p.repeat_penalty;
                l -= count[t] * (double)p.frequency_penalty + p.presence_penalty;
            }
            ref[t] = (float)l;
        }
        const float *got = sgllm__sampler_penalized(s, x);
        int bad = 0;
        for (int t = 0; t < V; t++) {
            if (count[t]) bad += fabsf(got[t] - ref[t]) > 1e-5f * (1 + fabsf(ref[t]));
            else bad += memcmp(&got[t], &x[t], sizeof(float)) != 0; // untouched, bit for bit
        }
        CHECKF(bad == 0, "rep %d: %d penalized logits differ from the formulas", rep, bad);
        CHECK(sgllm_sampler_sample(s, x) == ref_argmax(ref, V));
        // Reset empties the window.
        sgllm_sampler_reset(s);
        CHECK(sgllm__sampler_penalized(s, x) == x && sgllm_sampler_sample(s, x) == ref_argmax(x, V));
        sgllm_sampler_free(s);
    }
}

// The documented pipeline written plainly: full sort, top-k, (without top-k) the e^-40 cut,
// softmax at the temperature, top-p prefix, min-p ratio. Returns the kept count and ids in
// kept[] (sorted ascending), or -1 when a value sits within float rounding of a threshold
// (the caller draws new logits: float and double may then legitimately disagree).
typedef struct ref_cand {
    int32_t id;
    float logit;
} ref_cand;

static int ref_cmp(const void *a, const void *b) {
    const ref_cand *x = a, *y = b;
    if (x->logit != y->logit) return x->logit > y->logit ? -1 : 1;
    return x->id < y->id ? -1 : 1;
}
static int int_cmp(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

static int64_t ref_candidates(const float *x, int64_t n, const sgllm_sampler_params *p, int32_t *kept) {
    ref_cand *c = malloc(sizeof *c * (size_t)n);
    double *w = malloc(sizeof *w * (size_t)n);
    for (int64_t i = 0; i < n; i++) c[i] = (ref_cand){(int32_t)i, x[i]};
    qsort(c, (size_t)n, sizeof *c, ref_cmp);
    int64_t m = n;
    int near_cut = 0;
    if (p->top_k > 0 && p->top_k < n) m = p->top_k;
    else {
        for (int64_t i = 0; i < n; i++) {
            double z = ((double)c[i].logit - c[0].logit) / p->temperature;
            near_cut |= fabs(z + 40) < 1e-3;
            if (z < -40 && m == n) m = i;
        }
    }
    const int64_t m_cut = m;
    // The sampler rounds each weight to float once: bound the error of every sum by four
    // such roundings per weight.
    double total = 0;
    for (int64_t i = 0; i < m; i++) total += w[i] = exp(((double)c[i].logit - c[0].logit) / p->temperature);
    const double rel_err = 4 * 6e-8;
    // Top-p then min-p keep two prefixes of the ranking; the shorter one is the answer, so
    // only its boundary has to be clear of rounding.
    int64_t m_p = m, m_min = m;
    int near_p = 0, near_min = 0;
    if (p->top_p < 1) {
        double goal = p->top_p * total, cum = 0;
        for (int64_t i = 0; i < m; i++) {
            double before = cum, tol = rel_err * (cum + w[i] + p->top_p * total);
            cum += w[i];
            if (cum >= goal) {
                near_p = fabs(before - goal) < tol || fabs(cum - goal) < tol;
                m_p = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0) {
        m_min = 1; // the top token always stays
        while (m_min < m && w[m_min] >= p->min_p) m_min++;
        double tol = rel_err * p->min_p;
        near_min = fabs(w[m_min - 1] - p->min_p) < tol || (m_min < m && fabs(w[m_min] - p->min_p) < tol);
    }
    m = m_p < m_min ? m_p : m_min;
    int near = (m_p == m && near_p) || (m_min == m && near_min) || (m_cut == m && near_cut);
    for (int64_t i = 0; i < m; i++) kept[i] = c[i].id;
    qsort(kept, (size_t)m, sizeof *kept, int_cmp);
    free(c);
    free(w);
    return near ? -1 : m;
}

static void test_candidates(void) {
    int redrawn = 0, cases = 0;
    for (int rep = 0; rep < 400; rep++) {
        int64_t n = rep == 399 ? 262144 : 2 + (int64_t)(test_u64() % 3000);
        float *x = malloc(sizeof(float) * (size_t)n);
        int32_t *want = malloc(sizeof(int32_t) * (size_t)n), *got = malloc(sizeof(int32_t) * (size_t)n);
        unsigned mode = (unsigned)(test_u64() % 8);
        sgllm_sampler_params p;
        int64_t nw;
        int tries = 0;
        // LM-like (normal, with a few spikes) or flat uniform logits, and the parameters, drawn
        // again while a cut sits within rounding of a threshold: with 262144 tokens and top-p
        // near 1, every token at the cut can weigh less than the rounding bound, so new logits
        // alone would never clear it
        do {
            p = plain(test_uniform(0.2f, 2.0f));
            p.top_k = mode & 1 ? 1 + (int32_t)(test_u64() % (uint64_t)n) : 0;
            p.top_p = mode & 2 ? test_uniform(0.05f, 0.99f) : 1.0f;
            p.min_p = mode & 4 ? test_uniform(0.001f, 0.3f) : 0.0f;
            if (rep % 2) {
                for (int64_t i = 0; i < n; i++) x[i] = 2.5f * test_normal();
                for (int k = 0; k < 5; k++) x[test_u64() % (uint64_t)n] += test_uniform(5, 15);
            } else {
                random_logits(x, n, -8, 8);
            }
            nw = ref_candidates(x, n, &p, want);
            redrawn += nw < 0;
        } while (nw < 0 && ++tries < 100);
        sgllm_sampler *s = make(&p, (int32_t)n);
        const sgllm__cand *c;
        int64_t ng = sgllm__sampler_candidates(s, x, &c);
        for (int64_t i = 0; i < ng; i++) got[i] = c[i].id;
        qsort(got, (size_t)ng, sizeof *got, int_cmp);
        CHECKF(nw > 0 && ng == nw && !memcmp(got, want, sizeof *got * (size_t)ng),
               "n=%lld T=%g top_k=%d top_p=%g min_p=%g: kept %lld, reference %lld", (long long)n, p.temperature,
               p.top_k, p.top_p, p.min_p, (long long)ng, (long long)nw);
        cases++;
        sgllm_sampler_free(s);
        free(x);
        free(want);
        free(got);
    }
    printf("candidate sets: %d cases, %d draws of logits and parameters redrawn for sitting within rounding of a threshold\n", cases,
           redrawn);
}

// Frequencies of many draws against the expected probabilities, within 5 sigma per token
// (binomial standard deviation sqrt(N p (1 - p))): a wrong distribution fails, a right one
// fails with probability below 1e-5.
static void check_distribution(const char *label, sgllm_sampler *s, const float *x, const double *prob, int v) {
    enum { N = 200000 };
    int count[16] = {0};
    for (int i = 0; i < N; i++) {
        sgllm_token t = sgllm_sampler_sample(s, x);
        if (t >= 0 && t < v) count[t]++;
    }
    for (int t = 0; t < v; t++) {
        double mean = N * prob[t], sigma = sqrt(N * prob[t] * (1 - prob[t]));
        CHECKF(fabs(count[t] - mean) <= 5 * sigma + (prob[t] == 0 ? 0 : 1e-9),
               "%s: token %d drawn %d times, expected %.1f +- %.1f", label, t, count[t], mean, 5 * sigma);
    }
}

static void test_distribution(void) {
    enum { V = 8 };
    float x[V];
    double prob[V];
    random_logits(x, V, -2, 2);
    // Temperature 1, no truncation: softmax.
    double z = 0;
    for (int t = 0; t < V; t++) z += prob[t] = exp(x[t]);
    for (int t = 0; t < V; t++) prob[t] /= z;
    sgllm_sampler_params p = plain(1);
    sgllm_sampler *s = make(&p, V);
    check_distribution("softmax", s, x, prob, V);
    sgllm_sampler_free(s);
    // Temperature 0.7 and top-k 5: softmax of the 5 best at that temperature, 0 elsewhere.
    p = plain(0.7f);
    p.top_k = 5;
    int32_t order[V];
    for (int t = 0; t < V; t++) order[t] = t;
    for (int i = 0; i < V; i++)
        for (int j = i + 1; j < V; j++)
            if (x[order[j]] > x[order[i]]) {
                int32_t tmp = order[i];
                order[i] = order[j];
                order[j] = tmp;
            }
    z = 0;
    for (int t = 0; t < V; t++) prob[t] = 0;
    for (int i = 0; i < 5; i++) z += prob[order[i]] = exp(x[order[i]] / 0.7);
    for (int t = 0; t < V; t++) prob[t] /= z;
    s = make(&p, V);
    check_distribution("top-k 5, T 0.7", s, x, prob, V);
    sgllm_sampler_free(s);
}

static void test_determinism(void) {
    enum { V = 5000, STEPS = 500 };
    float *x = malloc(sizeof(float) * V);
    sgllm_sampler_params p;
    sgllm_sampler_default_params(&p);
    p.seed = test_u64();
    p.top_k = 0; // a wide candidate set, so different streams show
    p.temperature = 1.5f;
    p.repeat_penalty = 1.3f;
    p.frequency_penalty = 0.1f;
    sgllm_sampler *a = make(&p, V), *b = make(&p, V);
    p.seed ^= 1;
    sgllm_sampler *c = make(&p, V);
    sgllm_token seq[STEPS];
    int same_ab = 1, same_ac = 1, same_reset = 1;
    uint64_t logit_seed = test_u64();
    for (int pass = 0; pass < 2; pass++) {
        test__rng = logit_seed; // the same logits both passes
        for (int i = 0; i < STEPS; i++) {
            for (int64_t k = 0; k < V; k++) x[k] = 3 * test_normal();
            sgllm_token ta = sgllm_sampler_sample(a, x);
            if (pass == 0) {
                seq[i] = ta;
                sgllm_token tb = sgllm_sampler_sample(b, x), tc = sgllm_sampler_sample(c, x);
                same_ab &= ta == tb;
                same_ac &= ta == tc;
                sgllm_sampler_accept(b, tb);
                sgllm_sampler_accept(c, tc);
            } else {
                same_reset &= ta == seq[i];
            }
            sgllm_sampler_accept(a, ta);
        }
        sgllm_sampler_reset(a);
    }
    CHECKF(same_ab, "two samplers with one seed differ");
    CHECKF(!same_ac, "another seed gave the same %d tokens", STEPS);
    CHECKF(same_reset, "reset does not reproduce the sequence");
    sgllm_sampler_free(a);
    sgllm_sampler_free(b);
    sgllm_sampler_free(c);
    free(x);
}

static void test_arguments(void) {
    sgllm_sampler_params p;
    sgllm_sampler_default_params(&p);
    CHECK(p.struct_size == sizeof p && p.temperature == 0.8f && p.top_k == 40 && p.top_p == 0.95f &&
          p.min_p == 0.05f && p.repeat_penalty == 1.0f && p.penalty_last_n == 64 && p.seed == 0x5eed);
    sgllm_sampler *s = (sgllm_sampler *)&p; // must be overwritten with NULL on failure
    CHECK(sgllm_sampler_init(NULL, 10, &s) == SGLLM_ERR_INVALID_ARGUMENT && s == NULL);
    CHECK(sgllm_sampler_init(&p, 10, NULL) == SGLLM_ERR_INVALID_ARGUMENT);
    CHECK(sgllm_sampler_init(&p, 0, &s) == SGLLM_ERR_INVALID_ARGUMENT && s == NULL);
    CHECK(sgllm_sampler_init(&p, -5, &s) == SGLLM_ERR_INVALID_ARGUMENT && s == NULL);
    const struct {
        int field;
        float value;
    } bad[] = {{0, NAN}, {0, INFINITY}, {1, NAN}, {2, NAN}, {3, 0}, {3, -1}, {3, NAN}, {4, INFINITY}, {5, NAN}};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        sgllm_sampler_params q = p;
        float *f[] = {&q.temperature, &q.top_p, &q.min_p, &q.repeat_penalty, &q.frequency_penalty,
                      &q.presence_penalty};
        *f[bad[i].field] = bad[i].value;
        s = (sgllm_sampler *)&p;
        CHECKF(sgllm_sampler_init(&q, 10, &s) == SGLLM_ERR_INVALID_ARGUMENT && s == NULL, "bad param %zu accepted", i);
    }
    sgllm_sampler_params q = p;
    q.penalty_last_n = -1;
    CHECK(sgllm_sampler_init(&q, 10, &s) == SGLLM_ERR_INVALID_ARGUMENT && s == NULL);
    q = p;
    q.struct_size = 8;
    CHECK(sgllm_sampler_init(&q, 10, &s) == SGLLM_ERR_INVALID_ARGUMENT && s == NULL);
    sgllm_sampler_free(NULL);
    sgllm_sampler_accept(NULL, 1);
    sgllm_sampler_reset(NULL);
    float x[10] = {0};
    CHECK(sgllm_sampler_sample(NULL, x) == -1);
    s = make(&p, 10);
    CHECK(sgllm_sampler_sample(s, NULL) == -1);
    // Hostile logits give a token in range: all NaN, all -inf, one +inf.
    for (int i = 0; i < 10; i++) x[i] = NAN;
    sgllm_token t = sgllm_sampler_sample(s, x);
    CHECK(t >= 0 && t < 10);
    for (int i = 0; i < 10; i++) x[i] = -INFINITY;
    t = sgllm_sampler_sample(s, x);
    CHECK(t >= 0 && t < 10);
    x[6] = INFINITY;
    x[2] = NAN;
    CHECK(sgllm_sampler_sample(s, x) == 6);
    sgllm_sampler_free(s);
    // min_p above 1 and top_p at 0 still keep the top token.
    q = plain(1);
    q.min_p = 5;
    q.top_p = 0;
    s = make(&q, 10);
    random_logits(x, 10, -1, 1);
    CHECK(sgllm_sampler_sample(s, x) == ref_argmax(x, 10));
    sgllm_sampler_free(s);
}

static double time_samples(const sgllm_sampler_params *p, const float *x, int32_t n, int reps) {
    sgllm_sampler *s = make(p, n);
    double t0 = sgllm__now();
    for (int i = 0; i < reps; i++) sgllm_sampler_accept(s, sgllm_sampler_sample(s, x));
    double dt = (sgllm__now() - t0) / reps;
    sgllm_sampler_free(s);
    return dt;
}

static void report_speed(void) {
    enum { V = 262144 };
    float *x = malloc(sizeof(float) * V);
    for (int64_t i = 0; i < V; i++) x[i] = 2.5f * test_normal();
    for (int k = 0; k < 20; k++) x[test_u64() % V] += test_uniform(5, 15);
    sgllm_sampler_params p;
    sgllm_sampler_default_params(&p);
    p.seed = test_u64();
    p.repeat_penalty = 1.1f;
    double t_def = time_samples(&p, x, V, 200);
    p.top_k = 0;
    double t_topp = time_samples(&p, x, V, 100);
    p.top_p = 1;
    double t_minp = time_samples(&p, x, V, 100);
    p.min_p = 0;
    double t_full = time_samples(&p, x, V, 100);
    printf("speed, 262144 tokens, ms per token: defaults %.3f; top-k off: top-p 0.95 + min-p 0.05 %.3f, "
           "min-p 0.05 %.3f, no truncation %.3f\n",
           t_def * 1e3, t_topp * 1e3, t_minp * 1e3, t_full * 1e3);
    free(x);
}

int main(void) {
    test_seed();
    test_argmax();
    test_greedy();
    test_penalties();
    test_candidates();
    test_distribution();
    test_determinism();
    test_arguments();
    report_speed();
    return test_finish("test_sampler");
}
