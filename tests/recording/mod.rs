// The recording `tracing` layer and the `metrics` probe of the observability tests,
// included (`include!`) by tests/observability.rs and tests/adversarial_observability.rs.
// --- the recording subscriber -------------------------------------------------------------

/// A field's value as recorded.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
}

impl Value {
    fn as_u64(&self) -> Option<u64> {
        match self {
            Value::U64(n) => Some(*n),
            Value::I64(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

type Fields = BTreeMap<String, Value>;

/// A span: its name and every field recorded, at creation or later with `Span::record`.
#[derive(Clone, Debug)]
struct SpanRec {
    name: &'static str,
    fields: Fields,
    /// The parent span's name, if any.
    #[allow(dead_code)]
    parent: Option<&'static str>,
}

impl SpanRec {
    fn str(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_str)
    }
    fn u64(&self, field: &str) -> Option<u64> {
        self.fields.get(field).and_then(Value::as_u64)
    }
}

/// An event: its name, level and fields.
#[derive(Clone, Debug)]
struct EventRec {
    name: &'static str,
    level: Level,
    fields: Fields,
}

impl EventRec {
    fn str(&self, field: &str) -> Option<&str> {
        self.fields.get(field).and_then(Value::as_str)
    }
    fn u64(&self, field: &str) -> Option<u64> {
        self.fields.get(field).and_then(Value::as_u64)
    }
}

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::U64(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::I64(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::F64(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::Bool(value));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), Value::Str(value.into()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::Str(format!("{value:?}")));
    }
}

/// Where a span's record is, in its extensions.
#[derive(Clone, Copy)]
struct Index(usize);

#[derive(Clone, Default)]
struct Recording {
    spans: Arc<Mutex<Vec<SpanRec>>>,
    events: Arc<Mutex<Vec<EventRec>>>,
}

impl Recording {
    /// Spans named `name` whose `key` field is `key`.
    fn spans(&self, name: &str, key: &str) -> Vec<SpanRec> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.name == name && s.str("key") == Some(key))
            .cloned()
            .collect()
    }

    /// Every span named `name` recorded from `from` on.
    fn spans_from(&self, from: usize, name: &str) -> Vec<SpanRec> {
        let spans = self.spans.lock().unwrap();
        spans[from..]
            .iter()
            .filter(|s| s.name == name)
            .cloned()
            .collect()
    }

    /// Events named `name` whose `key` field is `key`.
    fn events(&self, name: &str, key: &str) -> Vec<EventRec> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e.name == name && e.str("key") == Some(key))
            .cloned()
            .collect()
    }

    fn span_count(&self) -> usize {
        self.spans.lock().unwrap().len()
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recording {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = if attrs.is_contextual() {
            ctx.lookup_current().map(|s| s.name())
        } else {
            attrs.parent().and_then(|p| ctx.span(p)).map(|s| s.name())
        };
        let mut rec = SpanRec {
            name: attrs.metadata().name(),
            fields: Fields::new(),
            parent,
        };
        attrs.record(&mut Visitor(&mut rec.fields));
        let index = {
            let mut spans = self.spans.lock().unwrap();
            spans.push(rec);
            spans.len() - 1
        };
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Index(index));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(Index(index)) = span.extensions().get::<Index>().copied() else {
            return;
        };
        let mut spans = self.spans.lock().unwrap();
        values.record(&mut Visitor(&mut spans[index].fields));
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut rec = EventRec {
            name: event.metadata().name(),
            level: *event.metadata().level(),
            fields: Fields::new(),
        };
        event.record(&mut Visitor(&mut rec.fields));
        self.events.lock().unwrap().push(rec);
    }
}

/// The process's recording subscriber and debugging recorder, installed once, before any
/// storage is built (metric handles taken before a recorder is installed stay no-ops).
fn installed() -> &'static (Recording, Snapshotter) {
    static BOTH: OnceLock<(Recording, Snapshotter)> = OnceLock::new();
    BOTH.get_or_init(|| {
        let recording = Recording::default();
        tracing::subscriber::set_global_default(Registry::default().with(recording.clone()))
            .expect("the only global subscriber");
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("the only global recorder");
        (recording, snapshotter)
    })
}

// --- the metrics, as the change since the previous snapshot -------------------------------

type Labels = Vec<(String, String)>;

/// Takes the recorder's snapshots. The debugging recorder resets every metric when it is read
/// (a gauge too), so the gauges are summed here across snapshots.
struct Probe {
    snapshotter: &'static Snapshotter,
    gauges: BTreeMap<(String, Labels), f64>,
}

impl Probe {
    fn new(snapshotter: &'static Snapshotter) -> Self {
        Probe {
            snapshotter,
            gauges: BTreeMap::new(),
        }
    }

    /// Counters as their change since the previous snapshot, histograms as the values
    /// recorded since, gauges as they are.
    fn take(&mut self) -> Metrics {
        let mut rows = Vec::new();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let (_, key) = key.into_parts();
            let mut labels: Labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let name = key.name().to_owned();
            let value = match value {
                DebugValue::Gauge(delta) => {
                    let sum = self
                        .gauges
                        .entry((name.clone(), labels.clone()))
                        .or_default();
                    *sum += delta.into_inner();
                    DebugValue::Gauge((*sum).into())
                }
                other => other,
            };
            rows.push((name, labels, value));
        }
        Metrics(rows)
    }
}

/// One snapshot of the recorder (see [`Probe::take`]).
struct Metrics(Vec<(String, Labels, DebugValue)>);

impl Metrics {
    /// The values of metric `name` whose labels include `label`.
    fn find(&self, name: &str, label: (&str, &str)) -> impl Iterator<Item = &DebugValue> {
        self.0.iter().filter_map(move |(n, labels, value)| {
            let hit = n == name && labels.iter().any(|(k, v)| k == label.0 && v == label.1);
            hit.then_some(value)
        })
    }

    fn counter(&self, name: &str, label: (&str, &str)) -> u64 {
        self.find(name, label)
            .map(|v| match v {
                DebugValue::Counter(n) => *n,
                other => panic!("{name} is not a counter: {other:?}"),
            })
            .sum()
    }

    fn gauge(&self, name: &str, label: (&str, &str)) -> f64 {
        self.find(name, label)
            .map(|v| match v {
                DebugValue::Gauge(g) => g.into_inner(),
                other => panic!("{name} is not a gauge: {other:?}"),
            })
            .sum()
    }

    fn histogram(&self, name: &str, label: (&str, &str)) -> Vec<f64> {
        self.find(name, label)
            .flat_map(|v| match v {
                DebugValue::Histogram(values) => values.iter().map(|f| f.into_inner()),
                other => panic!("{name} is not a histogram: {other:?}"),
            })
            .collect()
    }
}

