//! Results: rows of samples per contender, summarised (median, min, max),
//! compared (umlbr / kernel) and checked against the goals of issue 4;
//! written as JSON, a Markdown table and one SVG bar chart per group.
use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::topo::Contender;

/// One condition of a goal.
#[derive(Clone, Copy, Debug)]
pub enum Check {
    /// median(umlbr) / median(vs) >= x
    RatioAtLeast(Contender, f64),
    /// median(umlbr) / median(vs) <= x
    RatioAtMost(Contender, f64),
    /// median(umlbr) >= x (rows that are themselves ratios)
    UmlbrAtLeast(f64),
    /// median(umlbr) <= x
    UmlbrAtMost(f64),
}

#[derive(Clone, Copy, Debug)]
pub struct Goal {
    pub text: &'static str,
    pub checks: &'static [Check],
}

#[derive(Clone, Debug)]
pub struct RowDef {
    pub id: String,
    pub group: &'static str,
    pub name: String,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub goal: Option<Goal>,
}

/// A row as data. `{key}` in its id and name stands for a value given
/// when it is defined ([`Results::define_all`]).
#[derive(Clone, Copy, Debug)]
pub struct Row {
    pub id: &'static str,
    pub name: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
    pub goal: Option<Goal>,
}

/// A row whose higher values are better.
pub const fn higher(id: &'static str, name: &'static str, unit: &'static str) -> Row {
    Row {
        id,
        name,
        unit,
        higher_is_better: true,
        goal: None,
    }
}

/// A row whose lower values are better.
pub const fn lower(id: &'static str, name: &'static str, unit: &'static str) -> Row {
    Row {
        higher_is_better: false,
        ..higher(id, name, unit)
    }
}

impl Row {
    /// The row with a goal.
    pub const fn goal(self, text: &'static str, checks: &'static [Check]) -> Row {
        Row {
            goal: Some(goal(text, checks)),
            ..self
        }
    }
}

/// A goal: what it says, and the checks that decide whether it is met.
pub const fn goal(text: &'static str, checks: &'static [Check]) -> Goal {
    Goal { text, checks }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn summarize(v: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

#[derive(Default)]
pub struct Results {
    pub defs: Vec<RowDef>,
    pub samples: BTreeMap<(String, Contender), Vec<f64>>,
    /// Remarks per row (paths taken, FDB sizes...), deduplicated.
    pub notes: BTreeMap<String, Vec<String>>,
    pub errors: Vec<String>,
}

impl Results {
    /// Define `rows` in `group`, `{key}` in their ids and names replaced
    /// by its value in `vars`.
    pub fn define_all(&mut self, group: &'static str, rows: &[Row], vars: &[(&str, &str)]) {
        let fill = |s: &str| {
            vars.iter()
                .fold(s.to_string(), |s, (k, v)| s.replace(&format!("{{{k}}}"), v))
        };
        for r in rows {
            self.define(RowDef {
                id: fill(r.id),
                group,
                name: fill(r.name),
                unit: r.unit,
                higher_is_better: r.higher_is_better,
                goal: r.goal,
            });
        }
    }

    pub fn define(&mut self, def: RowDef) {
        if !self.defs.iter().any(|d| d.id == def.id) {
            self.defs.push(def);
        }
    }

    pub fn add(&mut self, row: &str, c: Contender, v: f64) {
        self.samples
            .entry((row.to_string(), c))
            .or_default()
            .push(v);
    }

    pub fn note(&mut self, row: &str, text: String) {
        let n = self.notes.entry(row.to_string()).or_default();
        if !n.contains(&text) {
            n.push(text);
        }
    }

    pub fn summary(&self, row: &str, c: Contender) -> Option<Summary> {
        self.samples
            .get(&(row.to_string(), c))
            .and_then(|v| summarize(v))
    }

    pub fn ratio(&self, row: &str, vs: Contender) -> Option<f64> {
        let u = self.summary(row, Contender::Umlbr)?;
        let k = self.summary(row, vs)?;
        (k.median != 0.0).then(|| u.median / k.median)
    }

    /// None when there is no goal or not enough data to tell.
    pub fn meets(&self, def: &RowDef) -> Option<bool> {
        let goal = def.goal.as_ref()?;
        let mut ok = true;
        for c in goal.checks {
            ok &= match *c {
                Check::RatioAtLeast(vs, x) => self.ratio(&def.id, vs)? >= x,
                Check::RatioAtMost(vs, x) => self.ratio(&def.id, vs)? <= x,
                Check::UmlbrAtLeast(x) => self.summary(&def.id, Contender::Umlbr)?.median >= x,
                Check::UmlbrAtMost(x) => self.summary(&def.id, Contender::Umlbr)?.median <= x,
            };
        }
        Some(ok)
    }

    /// The redirect floor's median over the kernel's: what the cheapest
    /// possible XDP forwarding on tun reaches in this row.
    pub fn floor_ratio(&self, row: &str) -> Option<f64> {
        let f = self.summary(row, Contender::Redirect)?;
        let k = self.summary(row, Contender::Kernel)?;
        (k.median != 0.0).then(|| f.median / k.median)
    }

    /// Where a row's goal compares umlbr with the kernel and the redirect
    /// floor ran too: can any XDP switch on tun meet the goal here, and how
    /// close umlbr is to the floor. Computed from the run, never fixed text.
    pub fn floor_verdict(&self, def: &RowDef) -> Option<String> {
        let goal = def.goal.as_ref()?;
        let floor = self.floor_ratio(&def.id)?;
        let umlbr = self.ratio(&def.id, Contender::Kernel)?;
        let mut floor_meets = true;
        for c in goal.checks {
            floor_meets &= match *c {
                Check::RatioAtLeast(Contender::Kernel, x) => floor >= x,
                Check::RatioAtMost(Contender::Kernel, x) => floor <= x,
                _ => continue,
            };
        }
        let of_floor = if def.higher_is_better {
            umlbr / floor
        } else {
            floor / umlbr
        };
        Some(format!(
            "goal {}: umlbr {umlbr:.2}× kernel; the redirect floor (bare bpf_redirect to \
             the peer port, or a devmap broadcast, on the same hooks: no switching work) {floor:.2}× kernel, so {}; umlbr \
             performs at {:.0}% of the floor",
            goal.text,
            if floor_meets {
                "the goal is within reach of a switch on these hooks here"
            } else {
                "no switch on these hooks can meet this goal on this machine"
            },
            100.0 * of_floor
        ))
    }

    fn contenders(&self, row: &str) -> Vec<(Contender, Summary)> {
        Contender::ALL
            .iter()
            .filter_map(|&c| self.summary(row, c).map(|s| (c, s)))
            .collect()
    }

    pub fn to_json(&self, machine: Value) -> Value {
        let rows: Vec<Value> = self
            .defs
            .iter()
            .filter(|d| !self.contenders(&d.id).is_empty())
            .map(|d| {
                let mut cs = serde_json::Map::new();
                for (c, s) in self.contenders(&d.id) {
                    cs.insert(
                        c.as_str().into(),
                        json!({"median": round(s.median), "min": round(s.min),
                               "max": round(s.max), "n": s.n}),
                    );
                }
                json!({
                    "id": d.id,
                    "group": d.group,
                    "name": d.name,
                    "unit": d.unit,
                    "higher_is_better": d.higher_is_better,
                    "contenders": cs,
                    "ratio": self.ratio(&d.id, Contender::Kernel).map(round),
                    "goal": d.goal.as_ref().map(|g| g.text),
                    "meets_goal": self.meets(d),
                    "floor_ratio": self.floor_ratio(&d.id).map(round),
                    "floor_verdict": self.floor_verdict(d),
                    "notes": self.notes.get(&d.id).cloned().unwrap_or_default(),
                })
            })
            .collect();
        json!({"machine": machine, "rows": rows, "errors": self.errors})
    }

    pub fn to_markdown(&self, machine: &Value) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# umlbr bench: umlbr against the kernel bridge\n");
        if let Some(m) = machine.as_object() {
            for (k, v) in m {
                let v = v.as_str().map(str::to_string).unwrap_or(v.to_string());
                let _ = writeln!(md, "- **{k}**: {v}");
            }
        }
        let header = {
            let mut h = String::from("| row | unit |");
            for c in Contender::ALL {
                let _ = write!(h, " {} |", c.as_str());
            }
            h.push_str(" umlbr/kernel | goal | met |\n|---|---|");
            for _ in Contender::ALL {
                h.push_str("---:|");
            }
            h.push_str("---:|---|:-:|\n");
            h
        };
        let mut group = "";
        for d in &self.defs {
            if self.contenders(&d.id).is_empty() {
                continue;
            }
            if d.group != group {
                group = d.group;
                let _ = write!(md, "\n## {group}\n\n![{group}]({group}.svg)\n\n{header}");
            }
            let _ = write!(
                md,
                "| {} | {}{} |",
                d.name,
                d.unit,
                if d.higher_is_better { " ↑" } else { " ↓" }
            );
            for c in Contender::ALL {
                match self.summary(&d.id, c) {
                    Some(s) => {
                        let _ = write!(
                            md,
                            " {} ({}–{}) |",
                            fmt_num(s.median),
                            fmt_num(s.min),
                            fmt_num(s.max)
                        );
                    }
                    None => md.push_str(" – |"),
                }
            }
            let ratio = self
                .ratio(&d.id, Contender::Kernel)
                .map(|r| format!("{r:.2}×"))
                .unwrap_or_else(|| "–".into());
            let goal = d.goal.as_ref().map(|g| g.text).unwrap_or("–");
            let met = match self.meets(d) {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            };
            let _ = writeln!(md, " {ratio} | {goal} | {met} |");
        }
        let verdicts: Vec<(&RowDef, String)> = self
            .defs
            .iter()
            .filter_map(|d| self.floor_verdict(d).map(|v| (d, v)))
            .collect();
        if !verdicts.is_empty() {
            let _ = writeln!(md, "\n## Goals against the floor\n");
            for (d, v) in verdicts {
                let _ = writeln!(md, "- {}: {v}", d.name);
            }
        }
        let notes: Vec<(&RowDef, &Vec<String>)> = self
            .defs
            .iter()
            .filter_map(|d| self.notes.get(&d.id).map(|n| (d, n)))
            .collect();
        if !notes.is_empty() {
            let _ = writeln!(md, "\n## Notes\n");
            for (d, n) in notes {
                let _ = writeln!(md, "- {}: {}", d.name, n.join("; "));
            }
        }
        if !self.errors.is_empty() {
            let _ = writeln!(md, "\n## Errors\n");
            for e in &self.errors {
                let _ = writeln!(md, "- {e}");
            }
        }
        md
    }

    /// One SVG per group: a panel per row, a bar per contender (median)
    /// with a min–max whisker.
    pub fn to_svgs(&self) -> Vec<(String, String)> {
        let mut groups: Vec<&'static str> = Vec::new();
        for d in &self.defs {
            if !groups.contains(&d.group) {
                groups.push(d.group);
            }
        }
        let mut out = Vec::new();
        for g in groups {
            let rows: Vec<&RowDef> = self
                .defs
                .iter()
                .filter(|d| d.group == g && !self.contenders(&d.id).is_empty())
                .collect();
            if rows.is_empty() {
                continue;
            }
            out.push((format!("{g}.svg"), self.svg(g, &rows)));
        }
        out
    }

    fn svg(&self, group: &str, rows: &[&RowDef]) -> String {
        const W: f64 = 760.0;
        const LABEL: f64 = 110.0;
        const BAR_W: f64 = 470.0;
        const BAR_H: f64 = 16.0;
        const GAP: f64 = 4.0;
        let mut body = String::new();
        let mut y = 34.0;
        for d in rows {
            let cs = self.contenders(&d.id);
            let _ = writeln!(
                body,
                r#"<text x="8" y="{:.0}" font-weight="bold">{} [{}{}]</text>"#,
                y + 12.0,
                esc(&d.name),
                esc(d.unit),
                if d.higher_is_better {
                    ", higher is better"
                } else {
                    ", lower is better"
                }
            );
            y += 20.0;
            let scale_max = cs
                .iter()
                .map(|(_, s)| s.max.max(s.median))
                .fold(0.0f64, f64::max);
            let scale = if scale_max > 0.0 {
                BAR_W / scale_max
            } else {
                0.0
            };
            for (c, s) in &cs {
                let w = (s.median * scale).max(1.0);
                let _ = writeln!(
                    body,
                    r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{}</text>"#,
                    LABEL - 6.0,
                    y + BAR_H - 4.0,
                    c.as_str()
                );
                let _ = writeln!(
                    body,
                    r#"<rect x="{LABEL}" y="{y:.0}" width="{w:.1}" height="{BAR_H}" fill="{}"/>"#,
                    color(*c)
                );
                let (x0, x1) = (LABEL + s.min * scale, LABEL + s.max * scale);
                let ym = y + BAR_H / 2.0;
                let _ = writeln!(
                    body,
                    r##"<path d="M{x0:.1} {ym:.1}H{x1:.1}M{x0:.1} {:.1}V{:.1}M{x1:.1} {:.1}V{:.1}" stroke="#222" fill="none"/>"##,
                    ym - 4.0,
                    ym + 4.0,
                    ym - 4.0,
                    ym + 4.0
                );
                let _ = writeln!(
                    body,
                    r#"<text x="{:.0}" y="{:.0}">{} (n={})</text>"#,
                    LABEL + BAR_W + 8.0,
                    y + BAR_H - 4.0,
                    fmt_num(s.median),
                    s.n
                );
                y += BAR_H + GAP;
            }
            if let Some(r) = self.ratio(&d.id, Contender::Kernel) {
                let goal = match (&d.goal, self.meets(d)) {
                    (Some(g), Some(true)) => format!("  goal: {} (met)", g.text),
                    (Some(g), Some(false)) => format!("  goal: {} (missed)", g.text),
                    (Some(g), None) => format!("  goal: {}", g.text),
                    (None, _) => String::new(),
                };
                let _ = writeln!(
                    body,
                    r##"<text x="{LABEL}" y="{:.0}" fill="#444">umlbr/kernel {r:.2}×{}</text>"##,
                    y + 12.0,
                    esc(&goal)
                );
                y += 18.0;
            }
            y += 14.0;
        }
        format!(
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h:.0}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="8" y="20" font-size="15" font-weight="bold">umlbr bench: {g} (median, whisker min–max)</text>
{body}</svg>
"##,
            h = y + 6.0,
            g = esc(group)
        )
    }
}

pub fn write_all(dir: &Path, res: &Results, machine: Value) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = serde_json::to_string_pretty(&res.to_json(machine.clone()))?;
    std::fs::write(dir.join("latest.json"), json + "\n")?;
    std::fs::write(dir.join("latest.md"), res.to_markdown(&machine))?;
    for (name, svg) in res.to_svgs() {
        std::fs::write(dir.join(name), svg)?;
    }
    Ok(())
}

fn color(c: Contender) -> &'static str {
    match c {
        Contender::Kernel => "#8c8c8c",
        Contender::KernelTuned => "#b9b9b9",
        Contender::Umlbr => "#2b7bd6",
        Contender::UmlbrTc => "#8bb8ea",
        Contender::Redirect => "#6fbf73",
        Contender::Ceiling => "#e0a030",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn round(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    // Four significant digits.
    let mag = 10f64.powi(3 - x.abs().log10().floor() as i32);
    (x * mag).round() / mag
}

pub fn fmt_num(x: f64) -> String {
    let a = x.abs();
    if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = summarize(&[3.0, 1.0, 2.0, f64::NAN]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(summarize(&[1.0, 2.0, 3.0, 4.0]).unwrap().median, 2.5);
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn goals_are_checked_against_the_kernel() {
        let mut r = Results::default();
        r.define(RowDef {
            id: "x".into(),
            group: "g",
            name: "x".into(),
            unit: "kpps",
            higher_is_better: true,
            goal: Some(Goal {
                text: "≥ 3× kernel",
                checks: &[Check::RatioAtLeast(Contender::Kernel, 3.0)],
            }),
        });
        r.add("x", Contender::Kernel, 100.0);
        assert_eq!(r.meets(&r.defs[0].clone()), None);
        r.add("x", Contender::Umlbr, 310.0);
        assert_eq!(r.meets(&r.defs[0].clone()), Some(true));
        r.add("x", Contender::Umlbr, 250.0);
        r.add("x", Contender::Umlbr, 200.0);
        assert_eq!(r.meets(&r.defs[0].clone()), Some(false));
        let j = r.to_json(json!({}));
        assert_eq!(j["rows"][0]["contenders"]["umlbr"]["n"], 3);
        assert_eq!(j["rows"][0]["ratio"], 2.5);
        assert!(r.to_markdown(&json!({})).contains("| x | kpps ↑ |"));
        assert!(r.to_svgs()[0].1.starts_with("<svg"));
    }

    #[test]
    fn the_floor_says_whether_a_goal_is_reachable() {
        let mut r = Results::default();
        let def = |id: &str, checks| RowDef {
            id: id.into(),
            group: "g",
            name: id.into(),
            unit: "kpps",
            higher_is_better: true,
            goal: Some(Goal {
                text: "≥ 3× kernel",
                checks,
            }),
        };
        r.define(def("a", &[Check::RatioAtLeast(Contender::Kernel, 3.0)]));
        r.define(def("b", &[Check::RatioAtLeast(Contender::Kernel, 2.0)]));
        for id in ["a", "b"] {
            r.add(id, Contender::Kernel, 100.0);
            r.add(id, Contender::Umlbr, 200.0);
        }
        assert_eq!(
            r.floor_verdict(&r.defs[0].clone()),
            None,
            "no floor measured"
        );
        for id in ["a", "b"] {
            r.add(id, Contender::Redirect, 250.0);
        }
        let a = r.floor_verdict(&r.defs[0].clone()).unwrap();
        assert!(a.contains("no switch on these hooks can meet"), "{a}");
        assert!(a.contains("at 80% of the floor"), "{a}");
        let b = r.floor_verdict(&r.defs[1].clone()).unwrap();
        assert!(b.contains("within reach"), "{b}");
        assert_eq!(r.to_json(json!({}))["rows"][0]["floor_ratio"], 2.5);
        assert!(
            r.to_markdown(&json!({}))
                .contains("## Goals against the floor")
        );
    }
}
