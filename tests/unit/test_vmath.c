/* test_vmath.c — the vectorisable exp, GELU and reductions of src/vmath.h against float64 libm, over a dense
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

    /* GELU (tanh form) against float64: gelu relative to |x| (it vanishes only at 0 and as x -> -inf), gelu'
     * absolute (it is at most 1.13 in size) */
    double worst_gelu = 0.0, worst_gelu_at = 0.0, worst_grad = 0.0, worst_grad_at = 0.0;
    for (double x = -12.0; x <= 12.0; x += 3.1e-5) {
        const float xf = (float)x;
        if (xf == 0.0f) continue;
        const double xd = xf, k = sqrt(2.0 / 3.14159265358979323846), c = 0.044715;
        const double th = tanh(k * (xd + c * xd * xd * xd));
        const double gelu = 0.5 * xd * (1.0 + th);
        const double grad = 0.5 * (1.0 + th) + 0.5 * xd * (1.0 - th * th) * k * (1.0 + 3.0 * c * xd * xd);
        const double eg = fabs((double)vm_gelu(xf) - gelu) / fabs(xd), ed = fabs((double)vm_gelu_grad(xf) - grad);
        if (eg > worst_gelu) {
            worst_gelu = eg;
            worst_gelu_at = xf;
        }
        if (ed > worst_grad) {
            worst_grad = ed;
            worst_grad_at = xf;
        }
    }
    printf("vm_gelu: worst %.3g relative to |x| at x = %.6g; vm_gelu_grad: worst %.3g at x = %.6g\n", worst_gelu,
           worst_gelu_at, worst_grad, worst_grad_at);
    CHECK(worst_gelu <= 1e-6);
    CHECK(worst_grad <= 1e-6);
    CHECK_EQ_F(vm_gelu(0.0f), 0.0f);
    CHECK_EQ_F(vm_gelu_grad(0.0f), 0.5f);
    CHECK_EQ_F(vm_gelu(1e4f), 1e4f);
    CHECK_EQ_F(vm_gelu_grad(1e4f), 1.0f);
    CHECK(vm_gelu(-1e4f) <= 0.0f && vm_gelu(-1e4f) > -1e-30f); /* capped: tiny, finite, not NaN */
    CHECK(fabsf(vm_gelu_grad(-1e4f)) < 1e-20f);
    CHECK(isnan(vm_gelu(NAN)) && isnan(vm_gelu_grad(NAN)));

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
