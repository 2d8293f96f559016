//! The worker's side of a membership change (reload, admin API, DNS): once the balancer's
//! generation moves, pooled idle connections to servers that no longer take requests
//! (drained or removed) are closed, and their h2c connections take no new streams (idle
//! ones close, busy ones once their last stream ends). In-flight exchanges are left alone: they finish on
//! their connections, which are closed here when the server's drain completes (the
//! balancer publishes again then).

use crate::balancer::SlotState;

use super::conns::Proxy;

impl Proxy {
    /// Closes this worker's pooled idle connections to every backend slot that is not
    /// active. Called by the worker loop when the balancer's generation changes; costs a
    /// walk over the per-slot pools, nothing per request.
    pub fn servers_changed(&mut self) {
        let bal = self.ctx.shared.balancer.clone();
        let retired: Vec<usize> = (0..self.idle.len())
            .filter(|&b| !self.idle[b].is_empty() && bal.backend(b).state() != SlotState::Active)
            .collect();
        for b in retired {
            for ui in std::mem::take(&mut self.idle[b]) {
                if self.ups.get(ui).is_some_and(|u| u.is_idle()) {
                    self.remove_upstream(ui);
                }
            }
        }
        let retired: Vec<usize> = (0..self.muxes.len())
            .filter(|&b| !self.muxes[b].is_empty() && bal.backend(b).state() != SlotState::Active)
            .collect();
        for b in retired {
            self.mux_retire(b);
        }
    }
}
