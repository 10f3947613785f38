/** The notebook's Schedule button: a cron expression and parameters, then the notebook runs on that schedule. */
import { Dialog, Notification, showDialog, showErrorMessage } from '@jupyterlab/apputils';
import { NotebookPanel } from '@jupyterlab/notebook';
import { Widget } from '@lumino/widgets';

import { requestAPI } from './api';
import { basename, labelled } from './dom';

interface IScheduleRequest {
  cron: string;
  parameters: string[];
}

class ScheduleForm extends Widget {
  private readonly cron = document.createElement('input');
  private readonly parameters = document.createElement('textarea');

  constructor() {
    super();
    this.addClass('mlplat-form');
    this.cron.className = this.parameters.className = 'jp-mod-styled';
    this.cron.value = '0 * * * *';
    this.parameters.placeholder = 'days=1\nname=churn';
    this.node.append(labelled('Cron (minute hour day month weekday)', this.cron),
      labelled('Parameters, one name=value a line', this.parameters));
  }

  getValue(): IScheduleRequest {
    const lines = this.parameters.value.split('\n').map(line => line.trim());
    return { cron: this.cron.value.trim(), parameters: lines.filter(Boolean) };
  }
}

/** Ask for a cron expression and parameters, save the notebook and schedule it; true when scheduled. */
export async function schedule(panel: NotebookPanel): Promise<boolean> {
  const name = basename(panel.context.path);
  const choice = await showDialog({
    title: `Schedule ${name}`,
    body: new ScheduleForm(),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Schedule' })]
  });
  if (!choice.button.accept || !choice.value) {
    return false;
  }
  try {
    await panel.context.save(); // the scheduler runs the notebook as it is on disk
    const { id } = await requestAPI<{ id: number }>('jobs/schedules', { notebook: panel.context.path, ...choice.value });
    Notification.success(`${name} runs on "${choice.value.cron}" (schedule #${id}).`, { autoClose: 5000 });
    return true;
  } catch (error) {
    await showErrorMessage('Schedule failed', error as Error);
    return false;
  }
}
