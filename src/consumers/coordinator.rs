//! The cluster view: what the group coordinators know, read with Tollgate's own control
//! connections the way Burrow and KMinion read it.
//!
//! Every `tier.coordinator_refresh_ms` (and at once when a read waits for a tie, at most once
//! a second) Tollgate asks:
//!
//! - **ListGroups** (every broker): which groups exist, with or without members;
//! - **FindCoordinator** for each followed group (cached until a request to it fails);
//! - **DescribeGroups**, one request per coordinator for all its groups: each group's state
//!   and member ids. Members the coordinator no longer lists are gone
//!   ([`crate::consumers::groups::Groups::apply_cluster`]), on every instance, whichever one saw them;
//! - **OffsetFetch** for each group (all its partitions): committed offsets, fed to
//!   [`crate::consumers::lag`] so that a group whose consumers are all gone keeps its lag and becomes
//!   STOPPED instead of disappearing.
//!
//! Followed groups: every registered group, every group the cluster lists and every group
//! seen on the wire, up to `tier.max_groups` (registered ones first). Load on the cluster, per
//! instance and period: one ListGroups per broker, one DescribeGroups per coordinator, and one
//! OffsetFetch per group; `tollgate_coordinator_requests_total` counts them.
//!
//! DescribeGroups on tansu leaves client ids and assignments empty, and a broker behind
//! Tollgate sees Tollgate's address as every client's host, so ties to client instances come
//! from the wire and the tier topic ([`crate::peers`]), not from here.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::{
    ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, ListGroupsRequest, ListGroupsResponse, OffsetFetchRequest,
    OffsetFetchResponse,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::watch;
use tracing::debug;

use crate::brokers::topology::Topology;
use crate::brokers::upstream::{ControlClient, UpstreamError, UpstreamSettings};
use crate::consumers::groups::Groups;
use crate::consumers::lag::Lag;
use crate::control::config::TierConfig;
use crate::control::registry::RegistryHandle;
use crate::metrics::Metrics;

/// What the poller reads and feeds: handed over by the server at start-up.
pub(crate) struct View {
    pub(crate) groups: Arc<Groups>,
    pub(crate) lag: Arc<Lag>,
    pub(crate) registry: Arc<RegistryHandle>,
    pub(crate) topology: Arc<Topology>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) upstream: UpstreamSettings,
    pub(crate) bootstrap: Vec<String>,
    pub(crate) cfg: TierConfig,
}

/// Least time between two refreshes asked for on demand.
const MIN_ON_DEMAND: Duration = Duration::from_secs(1);

/// What one refresh learned about one group.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct GroupState {
    pub(crate) state: String,
    pub(crate) members: BTreeSet<String>,
    /// (topic, partition) → committed offset.
    pub(crate) committed: Vec<((String, i32), i64)>,
}

/// The poller: its control connections, by broker address, and each group's coordinator.
pub(crate) struct Poller {
    clients: HashMap<String, Arc<ControlClient>>,
    coordinators: HashMap<String, String>,
}

impl Default for Poller {
    fn default() -> Self {
        Self::new()
    }
}

impl Poller {
    pub(crate) fn new() -> Poller {
        Poller {
            clients: HashMap::new(),
            coordinators: HashMap::new(),
        }
    }

    async fn client(
        &mut self,
        shared: &View,
        addr: &str,
    ) -> Result<Arc<ControlClient>, UpstreamError> {
        if let Some(c) = self.clients.get(addr) {
            return Ok(c.clone());
        }
        let c =
            Arc::new(ControlClient::connect(addr, &shared.upstream, shared.metrics.clone()).await?);
        self.clients.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// A request to `addr` failed: reconnect next time, and find coordinators again.
    fn failed(&mut self, addr: &str) {
        self.clients.remove(addr);
        self.coordinators.retain(|_, a| a != addr);
    }

    /// One refresh: ask, then apply what was learned.
    pub(crate) async fn refresh(&mut self, shared: &View) {
        let asked_at = Instant::now();
        let followed = self.followed(shared).await;
        let mut by_coordinator: HashMap<String, Vec<String>> = HashMap::new();
        for g in followed {
            match self.coordinator(shared, &g).await {
                Some(addr) => by_coordinator.entry(addr).or_default().push(g),
                None => debug!(group = g, "no coordinator found for group"),
            }
        }
        for (addr, groups) in by_coordinator {
            match self.describe(shared, &addr, &groups).await {
                Ok(states) => apply(shared, states, asked_at),
                Err(e) => {
                    debug!(coordinator = addr, error = %e, "cluster view: coordinator request failed");
                    self.failed(&addr);
                }
            }
        }
    }

    /// Registered groups, then groups the cluster lists, then groups seen on the wire.
    async fn followed(&mut self, shared: &View) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut seen = BTreeSet::new();
        if let Some(reg) = shared.registry.get() {
            for e in &reg.consumers {
                if let Some(g) = &e.group {
                    if seen.insert(g.clone()) {
                        out.push(g.clone());
                    }
                }
            }
        }
        let mut listed = self.list_groups(shared).await;
        listed.extend(shared.groups.names());
        listed.sort();
        for g in listed {
            if seen.insert(g.clone()) {
                out.push(g);
            }
        }
        out.truncate(shared.cfg.max_groups);
        out
    }

    /// ListGroups on every known broker (each lists the groups it coordinates).
    async fn list_groups(&mut self, shared: &View) -> Vec<String> {
        let mut addrs: Vec<String> = shared
            .topology
            .brokers()
            .into_iter()
            .map(|b| b.upstream)
            .collect();
        if addrs.is_empty() {
            addrs = shared.bootstrap.clone();
        }
        let mut out = Vec::new();
        for addr in addrs {
            let resp = async {
                let c = self.client(shared, &addr).await?;
                let v = c.version_for(ApiKey::ListGroups).unwrap_or(0).min(4);
                c.request::<_, ListGroupsResponse>(
                    ApiKey::ListGroups,
                    v,
                    &ListGroupsRequest::default(),
                )
                .await
            }
            .await;
            count(shared, "ListGroups", resp.is_ok());
            match resp {
                Ok(r) if r.error_code == 0 => out.extend(
                    r.groups
                        .iter()
                        .filter(|g| matches!(g.protocol_type.as_str(), "consumer" | ""))
                        .map(|g| g.group_id.to_string()),
                ),
                Ok(_) => {}
                Err(_) => self.failed(&addr),
            }
        }
        out
    }

    /// The coordinator's address for `group` (cached).
    async fn coordinator(&mut self, shared: &View, group: &str) -> Option<String> {
        if let Some(a) = self.coordinators.get(group) {
            return Some(a.clone());
        }
        let bootstrap = shared.bootstrap.first()?.clone();
        let resp = async {
            let c = self.client(shared, &bootstrap).await?;
            let v = c.version_for(ApiKey::FindCoordinator).unwrap_or(0);
            let key = StrBytes::from_string(group.to_string());
            let req = if v >= 4 {
                FindCoordinatorRequest::default().with_coordinator_keys(vec![key])
            } else {
                FindCoordinatorRequest::default().with_key(key)
            };
            c.request::<_, FindCoordinatorResponse>(ApiKey::FindCoordinator, v, &req)
                .await
        }
        .await;
        count(shared, "FindCoordinator", resp.is_ok());
        let r = match resp {
            Ok(r) => r,
            Err(_) => {
                self.failed(&bootstrap);
                return None;
            }
        };
        let addr = match r.coordinators.first() {
            Some(c) if c.error_code == 0 => format!("{}:{}", c.host, c.port),
            Some(_) => return None,
            None if r.error_code == 0 => format!("{}:{}", r.host, r.port),
            None => return None,
        };
        self.coordinators.insert(group.to_string(), addr.clone());
        Some(addr)
    }

    /// DescribeGroups for all of `groups`, then OffsetFetch for each.
    async fn describe(
        &mut self,
        shared: &View,
        addr: &str,
        groups: &[String],
    ) -> Result<HashMap<String, GroupState>, UpstreamError> {
        let c = self.client(shared, addr).await?;
        let v = c.version_for(ApiKey::DescribeGroups).unwrap_or(0);
        let req = DescribeGroupsRequest::default().with_groups(
            groups
                .iter()
                .map(|g| GroupId(StrBytes::from_string(g.clone())))
                .collect(),
        );
        let resp = c
            .request::<_, DescribeGroupsResponse>(ApiKey::DescribeGroups, v, &req)
            .await;
        count(shared, "DescribeGroups", resp.is_ok());
        let mut out: HashMap<String, GroupState> = HashMap::new();
        for d in resp?.groups.iter().filter(|d| d.error_code == 0) {
            out.insert(
                d.group_id.to_string(),
                GroupState {
                    state: d.group_state.to_string(),
                    members: d.members.iter().map(|m| m.member_id.to_string()).collect(),
                    committed: Vec::new(),
                },
            );
        }
        let mut cluster_topics = None;
        for (g, st) in out.iter_mut() {
            st.committed = committed(shared, &c, g, &mut cluster_topics).await?;
        }
        Ok(out)
    }
}

/// The committed offsets of `group`: every partition it has one for. A broker that answers
/// an all-topics OffsetFetch with nothing (tansu does) is asked again for the topics the group
/// is known to read (wire, tier, registry), else for every topic of the cluster.
async fn committed(
    shared: &View,
    c: &ControlClient,
    group: &str,
    cluster_topics: &mut Option<Vec<(String, Vec<i32>)>>,
) -> Result<Vec<((String, i32), i64)>, UpstreamError> {
    let all = offset_fetch(shared, c, group, None).await?;
    if !all.is_empty() {
        return Ok(all);
    }
    if cluster_topics.is_none() {
        *cluster_topics = Some(topics_of_cluster(c).await?);
    }
    let known = known_topics(shared, group);
    let named: Vec<(String, Vec<i32>)> = cluster_topics
        .iter()
        .flatten()
        .filter(|(t, _)| known.is_empty() || known.contains(t))
        .cloned()
        .collect();
    if named.is_empty() {
        return Ok(Vec::new());
    }
    offset_fetch(shared, c, group, Some(&named)).await
}

/// Topics `group` is known to read: its tracked partitions, its members' assignments and its
/// registry entry's topics.
fn known_topics(shared: &View, group: &str) -> BTreeSet<String> {
    let mut out = shared.lag.topics_of(group);
    out.extend(shared.groups.topics_of(group));
    if let Some(reg) = shared.registry.get() {
        if let Some(e) = reg.entry_for(group) {
            out.extend(e.topics.iter().cloned());
        }
    }
    out
}

/// Every topic of the cluster with its partitions.
async fn topics_of_cluster(c: &ControlClient) -> Result<Vec<(String, Vec<i32>)>, UpstreamError> {
    let md = c.metadata_all().await?;
    Ok(md
        .topics
        .iter()
        .filter(|t| t.error_code == 0 && !t.is_internal)
        .filter_map(|t| {
            let name = t.name.as_ref()?.to_string();
            Some((
                name,
                t.partitions.iter().map(|p| p.partition_index).collect(),
            ))
        })
        .collect())
}

/// One OffsetFetch: all topics (`None`) or these.
async fn offset_fetch(
    shared: &View,
    c: &ControlClient,
    group: &str,
    topics: Option<&[(String, Vec<i32>)]>,
) -> Result<Vec<((String, i32), i64)>, UpstreamError> {
    use kafka_protocol::messages::offset_fetch_request::{
        OffsetFetchRequestTopic, OffsetFetchRequestTopics,
    };
    let v = c.version_for(ApiKey::OffsetFetch).unwrap_or(0).max(2);
    let id = GroupId(StrBytes::from_string(group.to_string()));
    let req = if v >= 8 {
        let topics = topics.map(|ts| {
            ts.iter()
                .map(|(t, ps)| {
                    OffsetFetchRequestTopics::default()
                        .with_name(StrBytes::from_string(t.clone()).into())
                        .with_partition_indexes(ps.clone())
                })
                .collect()
        });
        OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
            .with_group_id(id)
            .with_topics(topics)])
    } else {
        let topics = topics.map(|ts| {
            ts.iter()
                .map(|(t, ps)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(StrBytes::from_string(t.clone()).into())
                        .with_partition_indexes(ps.clone())
                })
                .collect()
        });
        OffsetFetchRequest::default()
            .with_group_id(id)
            .with_topics(topics)
    };
    let resp = c
        .request::<_, OffsetFetchResponse>(ApiKey::OffsetFetch, v, &req)
        .await;
    count(shared, "OffsetFetch", resp.is_ok());
    let resp = resp?;
    let mut out = Vec::new();
    let mut add = |topic: String, p: i32, offset: i64, err: i16| {
        if err == 0 && offset >= 0 {
            out.push(((topic, p), offset));
        }
    };
    if v >= 8 {
        for g in resp.groups.iter().filter(|g| g.error_code == 0) {
            for t in &g.topics {
                for p in &t.partitions {
                    add(
                        t.name.to_string(),
                        p.partition_index,
                        p.committed_offset,
                        p.error_code,
                    );
                }
            }
        }
    } else if resp.error_code == 0 {
        for t in &resp.topics {
            for p in &t.partitions {
                add(
                    t.name.to_string(),
                    p.partition_index,
                    p.committed_offset,
                    p.error_code,
                );
            }
        }
    }
    Ok(out)
}

fn count(shared: &View, api: &str, ok: bool) {
    shared
        .metrics
        .coordinator_requests
        .with_label_values(&[api, if ok { "ok" } else { "error" }])
        .inc();
}

/// Apply one refresh to the group view and the lag view.
fn apply(shared: &View, states: HashMap<String, GroupState>, asked_at: Instant) {
    let groups = &shared.groups;
    let lag = &shared.lag;
    for (g, st) in states {
        // "Dead" is what a coordinator says of a group it does not know.
        if st.state == "Dead" && st.committed.is_empty() {
            continue;
        }
        groups.apply_cluster(&g, &st.state, Some(&st.members), asked_at);
        for (tp, offset) in st.committed {
            lag.observe_cluster_commit(&g, tp, offset);
        }
    }
}

/// Refresh every `tier.coordinator_refresh_ms`, and on demand, until shutdown.
pub(crate) async fn run(shared: Arc<View>, mut shutdown: watch::Receiver<bool>) {
    let every = Duration::from_millis(shared.cfg.coordinator_refresh_ms);
    if every.is_zero() {
        return;
    }
    let mut poller = Poller::new();
    let mut last = Instant::now() - every;
    loop {
        let next = (last + every).saturating_duration_since(Instant::now());
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = shared.groups.refresh_wanted() => {
                let since = last.elapsed();
                if since < MIN_ON_DEMAND {
                    tokio::time::sleep(MIN_ON_DEMAND - since).await;
                }
            }
            _ = shutdown.changed() => return,
        }
        last = Instant::now();
        poller.refresh(&shared).await;
    }
}
