/** The Jobs section: notebook schedules (broken ones say why; each can be unscheduled) and the most recent runs. */
import { showErrorMessage } from '@jupyterlab/apputils';

import { IJobRun, ISchedule, requestAPI } from './api';
import { basename, fill, h, when } from './dom';

export class JobsSection {
  readonly node = h('section', 'mlplat-section mlplat-jobs');
  private readonly schedules = h('ul', 'mlplat-list');
  private readonly runs = h('ul', 'mlplat-list');

  constructor() {
    this.node.append(h('h3', '', 'Jobs'), h('h4', '', 'Schedules'), this.schedules, h('h4', '', 'Recent runs'), this.runs);
  }

  async refresh(): Promise<void> {
    await Promise.all([
      fill(this.schedules, async () => listOf(await requestAPI<ISchedule[]>('jobs/schedules'),
        schedule => scheduleItem(schedule, () => void this.refresh()), 'No schedules.')),
      fill(this.runs, async () => listOf(await requestAPI<IJobRun[]>('jobs/runs?limit=10'), runItem, 'No runs yet.'))
    ]);
  }
}

function listOf<T>(items: T[], render: (item: T) => HTMLElement, empty: string): HTMLElement[] {
  return items.length ? items.map(render) : [h('li', 'mlplat-empty', empty)];
}

function scheduleItem(schedule: ISchedule, changed: () => void): HTMLElement {
  const parameters = Object.entries(schedule.parameters).map(([name, value]) => `${name}=${JSON.stringify(value)}`);
  const state = schedule.broken ? ' broken' : schedule.enabled ? ` next ${when(schedule.next_run)}` : ' paused';
  const unschedule = h('button', 'jp-mod-styled mlplat-unschedule', 'Unschedule');
  unschedule.title = 'Delete this schedule (its past runs stay listed)';
  unschedule.addEventListener('click', async () => {
    try {
      await requestAPI(`jobs/schedules/${schedule.id}`, undefined, 'DELETE');
      changed();
    } catch (error) {
      await showErrorMessage('Unschedule failed', error as Error);
    }
  });
  return h('li', 'mlplat-schedule', h('b', '', basename(schedule.notebook)), ` #${schedule.id} `,
    h('code', '', schedule.cron), state, schedule.last_status ? `, last ${schedule.last_status}` : '', unschedule,
    schedule.broken ? h('div', 'mlplat-error', schedule.broken) : '', h('div', 'mlplat-metrics', parameters.join(' ')));
}

function runItem(run: IJobRun): HTMLElement {
  return h('li', `mlplat-run mlplat-${run.status}`, h('b', '', basename(run.notebook)),
    ` ${run.status} in ${run.seconds.toFixed(1)} s`, run.error ? h('div', 'mlplat-error', run.error) : '');
}
