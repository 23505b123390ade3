"""EPGEDMSDEScheduler: EDM's stochastic sampler (Algorithm 2) as the reference writes it, on the shifted Karras grid."""

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from .. import sigmas as sm
from .scheduling_epg_heun import EPGHeunScheduler


# SchedulerMixin and ConfigMixin are named here too: diffusers' pipeline loader looks them up in this module.
class EPGEDMSDEScheduler(EPGHeunScheduler, SchedulerMixin, ConfigMixin):
    """The reference's ``edm_sde`` sampler: Heun with churn, with the reference's two departures from EDM.

    Before every interval a standard-normal z is drawn from ``generator`` (whether or not churn applies there),
    x_hat = x + sqrt(sigma_hat^2 - sigma_i^2) s_noise z with sigma_hat = sigma_i (1 + gamma); then an Euler step
    from sigma_hat and a Heun correction. Reference behaviour: gamma = min(s_churn / n, sqrt 2 - 1) with n the
    number of grid points (EDM divides by the number of steps), and the last interval, to sigma_min, is a plain
    Euler step (EDM corrects every interval that does not end at 0): 2(n - 1) - 1 evaluations.

    Args:
        Those of [`EPGHeunScheduler`]; `s_churn` defaults to 0 (then only the always-drawn noise differs from Heun:
        none is added).
    """

    churn_divisor_offset = 0  # gamma = S_churn / n

    @register_to_config
    def __init__(
        self,
        sigma_min: float = sm.SIGMA_MIN,
        sigma_max: float = sm.SIGMA_MAX,
        sigma_data: float = sm.SIGMA_DATA,
        rho: float = sm.RHO,
        image_size: int = 256,
        prediction_type: str = "sample",
        final_sigmas_type: str = "sigma_min",
        clip_sample: bool = True,
        clip_sample_range: float = 1.0,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
    ):
        self._check_config()
        self._reset()

    def _corrects(self, interval: int, intervals: int) -> bool:
        return interval < intervals - 1  # the reference's last interval is a plain Euler step

    def _draws_noise(self) -> bool:
        return True  # one draw per interval, churn or not (the reference's noise stream)
