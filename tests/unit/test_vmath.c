/* test_vmath.c — the vectorisable exp, tanh and reductions of src/vmath.h against float64 libm, over a dense
 * sweep of the ranges the kernels use, plus the special values (0, +-inf, NaN, the clamps). */
#include <math.h>
#include <stdint.h>

#include "check.h"
#include "vmath.h"

/* |a - b| in units of the float spacing at b (b a correctly rounded float64 reference). */
static double ulps(float a, double b) {
    const double spacing = nextafterf((float)fabs(b), INFINITY) - (float)fabs(b);
    return fabs((double)a - b) / spacing;
}

int main(void) {
    double worst_exp = 0.0, worst_exp_at = 0.0;
    for (double x = -87.3; x <= 88.7; x += 1.7e-4) {
        const float xf = (float)x;
        const double u = ulps(vm_expf(xf), exp((double)xf));
        if (u > worst_exp) {
            worst_exp = u;
            worst_exp_at = xf;
        }
    }
    printf("vm_expf: worst %.2f ulp at x = %.6g\n", worst_exp, worst_exp_at);
    CHECK(worst_exp <= 2.0);
    CHECK_EQ_F(vm_expf(0.0f), 1.0f);
    CHECK_EQ_F(vm_expf(-INFINITY), 0.0f);
    CHECK_EQ_F(vm_expf(-100.0f), 0.0f);
    CHECK(isinf(vm_expf(100.0f)) && vm_expf(100.0f) > 0);
    CHECK(vm_expf(88.7f) > 3.0e38f && isfinite(vm_expf(88.7f)));

    double worst_tanh = 0.0, worst_tanh_at = 0.0;
    for (double x = -12.0; x <= 12.0; x += 3.1e-5) {
        const float xf = (float)x;
        const double ref = tanh((double)xf);
        const double rel = ref != 0.0 ? fabs((double)vm_tanhf(xf) - ref) / fabs(ref) : fabs((double)vm_tanhf(xf));
        if (rel > worst_tanh) {
            worst_tanh = rel;
            worst_tanh_at = xf;
        }
    }
    for (float xf = 1e-30f; xf < 0.3f; xf *= 1.37f) { /* tiny arguments: no cancellation */
        const double rel = fabs((double)vm_tanhf(xf) - tanh((double)xf)) / tanh((double)xf);
        if (rel > worst_tanh) {
            worst_tanh = rel;
            worst_tanh_at = xf;
        }
    }
    printf("vm_tanhf: worst %.3g relative at x = %.6g\n", worst_tanh, worst_tanh_at);
    CHECK(worst_tanh <= 4e-7);
    CHECK_EQ_F(vm_tanhf(0.0f), 0.0f);
    CHECK_EQ_F(vm_tanhf(INFINITY), 1.0f);
    CHECK_EQ_F(vm_tanhf(-INFINITY), -1.0f);
    CHECK(isnan(vm_tanhf(NAN)));
    CHECK_EQ_F(vm_tanhf(-3.0f), -vm_tanhf(3.0f));

    /* reductions: odd lengths exercise the tails; sums against float64 references */
    enum { N = 4099 };
    static float x[N], y[N], e[N];
    for (int i = 0; i < N; i++) {
        x[i] = (float)sin(0.37 * i) * 7.0f;
        y[i] = (float)cos(0.11 * i);
    }
    x[2049] = 9.5f;
    for (int n = 1; n <= N; n += n < 40 ? 1 : 517) {
        float mref = -INFINITY;
        double dref = 0.0, sref = 0.0;
        for (int i = 0; i < n; i++) {
            mref = x[i] > mref ? x[i] : mref;
            dref += (double)x[i] * y[i];
            sref += exp(((double)x[i] - 9.5) * 0.5);
        }
        CHECK_EQ_F(vm_max(x, n), mref);
        CHECK(fabs(vm_dot(x, y, n) - dref) <= 1e-9 * (1.0 + fabs(dref)));
        const double s = vm_exp_sum(e, x, 9.5f, 0.5f, n);
        CHECK(fabs(s - sref) <= 3e-7 * sref);
        double s2 = 0.0;
        for (int i = 0; i < n; i++) s2 += e[i];
        CHECK(fabs(s - s2) <= 1e-12 * s2);
    }
    return failures ? 1 : 0;
}
